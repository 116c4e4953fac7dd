"""Ulysses sequence parallel (runtime/parallel.py) on the CPU with gloo: N ranks give the one-process run.

Each N spawns its ranks once (``_sp_worker.main``) and runs every scenario in them: sdpa and eager,
both ``global_sink`` settings, 6 chunks with ring wrap and eviction and prompt switches at s = 6
(<= 12) and s = 15 (> 12). The single-process references run here, on rank 0's inputs.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import _sp_worker as worker
import pytest
import torch

from arvid.runtime import StreamConfig, StreamingGenerator, build_model
from arvid.runtime.parallel import check_sequence_parallel

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


def spawn_ranks(size: int, tmp: Path) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the children's torch reads it at import
    try:
        procs = [ctx.Process(target=worker.main, args=(r, size, str(tmp / "store"), str(tmp))) for r in range(size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    errors = [(tmp / f"rank{r}.err").read_text() for r in range(size) if (tmp / f"rank{r}.err").exists()]
    assert not errors, errors[0]
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(size)]


def single_process(preset, size: int) -> dict:
    model = build_model(preset.model, seed=0)
    out = {}
    for backend, global_sink in worker.scenarios_for(size):
        gen = StreamingGenerator(
            model, StreamConfig(global_sink=global_sink), latent_size=(preset.latent_height, preset.latent_width),
            backend=backend,
        )  # fmt: skip
        out[(backend, global_sink)] = worker.run_stream(gen, gen.executor.cache, preset, seed=7)
    if size == 4:
        gen = StreamingGenerator(
            model, StreamConfig(), latent_size=(preset.latent_height, preset.latent_width), backend="triton"
        )
        out["triton"] = worker.run_stream(
            gen, gen.executor.cache, preset, 7, worker.TRITON_FRAMES, worker.TRITON_SWITCHES
        )
        for group, seed in enumerate(worker.DP_SEEDS):
            size_hw = (preset.latent_height, preset.latent_width)
            gen = StreamingGenerator(model, StreamConfig(), latent_size=size_hw, backend="sdpa")
            out["dp", group] = worker.run_stream(gen, gen.executor.cache, preset, seed=seed)
    return out


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """fp32 within 1e-5 relative to the reference's largest magnitude."""
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= 1e-5 * max(scale, 1e-30), f"{what}: max |diff| {err:.3g} vs max |ref| {scale:.3g}"


@pytest.fixture(scope="module", params=[2, pytest.param(4, marks=pytest.mark.slow)])
def sp_run(request, tmp_path_factory):
    size = request.param
    ranks = spawn_ranks(size, tmp_path_factory.mktemp(f"sp{size}"))
    return size, ranks, single_process(worker.preset_for(size), size)


def test_all_to_all_round_trip(sp_run):
    _, ranks, _ = sp_run
    for r, res in enumerate(ranks):
        assert res["round_trip"] == {"heads_ok": True, "back_ok": True}, f"rank {r}"


@pytest.mark.parametrize("scenario", worker.SCENARIOS, ids=lambda s: f"{s[0]}-global_sink={s[1]}")
def test_matches_single_process(sp_run, scenario):
    size, ranks, ref = sp_run
    if scenario not in ref:
        pytest.skip(f"{scenario} is not run at {size} ranks (time)")
    want_latents, want_caches = ref[scenario]
    heads = want_caches[0][0].shape[3]
    hn = heads // size
    for r, res in enumerate(ranks):
        got = res[scenario]
        assert_rel_close(got["latents"], want_latents, f"rank {r} latents")
        assert len(got["caches"]) == len(want_caches) == worker.FRAMES // 3
        for ci, ((k, v), (wk, wv)) in enumerate(zip(got["caches"], want_caches, strict=True)):
            assert k.shape[3] == hn, f"rank {r} holds {k.shape[3]} heads, not {hn}"
            sl = slice(r * hn, (r + 1) * hn)
            assert_rel_close(k, wk[:, :, :, sl], f"rank {r} K cache after chunk {ci}")
            assert_rel_close(v, wv[:, :, :, sl], f"rank {r} V cache after chunk {ci}")


def test_collective_trace_identical_across_ranks(sp_run):
    _, ranks, _ = sp_run
    for scenario in worker.scenarios_for(len(ranks)):
        traces = [res[scenario]["trace"] for res in ranks]
        assert all(t == traces[0] for t in traces[1:]), scenario
        ops = [op for op, _, _ in traces[0]]
        layers = 2
        # 6 chunks x 5 forwards + 2 re-caches, each forward 2 all-to-alls per layer and 1 all-gather.
        forwards = 6 * 5 + 2
        assert ops.count("all_to_all") == 2 * layers * forwards
        assert ops.count("all_gather") == forwards
        assert ops.count("broadcast") > 0
        timed = [res[scenario]["comm_s"] for res in ranks]
        assert all(t > 0 for t in timed) if scenario[0] == "sdpa" else all(t == 0 for t in timed), timed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=3, num_heads=2, chunk_tokens=48, world_size=3), "heads are not divisible by 3"),
        (dict(size=2, num_heads=12, chunk_tokens=45, world_size=2), "tokens are not divisible by 2"),
        (dict(size=2, num_heads=12, chunk_tokens=48, world_size=None), "launch with torchrun --nproc_per_node 2"),
        (dict(size=2, num_heads=12, chunk_tokens=48, world_size=4), "needs exactly 2"),
        (
            dict(size=4, num_heads=12, chunk_tokens=48, world_size=4, device="cuda", cuda_devices=2),
            "only 2 CUDA devices",
        ),
        (dict(size=0, num_heads=12, chunk_tokens=48, world_size=None), "must be >= 1"),
    ],
)
def test_invalid_size_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sequence_parallel(**kwargs)


def test_valid_sizes_accepted():
    check_sequence_parallel(1, num_heads=2, chunk_tokens=48, world_size=None)
    check_sequence_parallel(4, num_heads=12, chunk_tokens=4680, world_size=4, device="cuda", cuda_devices=8)


def test_cli_rejects_bad_size_before_loading(capsys, monkeypatch):
    from arvid.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = ["--out", "never.safetensors", "--frames", "3"]
    assert main(["generate", "--preset", "tiny", "--sequence-parallel", "4", *out]) == 2
    assert capsys.readouterr().err.strip() == (
        "arvid generate: error: --sequence-parallel 4: the model's 2 heads are not divisible by 4"
    )
    assert main(["generate", "--preset", "tiny", "--sequence-parallel", "2", *out]) == 2
    assert "launch with torchrun --nproc_per_node 2" in capsys.readouterr().err
    assert not Path("never.safetensors").exists()


@pytest.mark.slow
def test_torchrun_generate_matches_single_process(tmp_path):
    """The launch line of the README: 2 ranks under torchrun write the one-process latents (rank 0 only).

    Launched from the checkout root, the way tests/test_checkout_imports.py starts every other entry
    point: ``-m arvid`` there finds the root's folders first (arvid/_checkout.py), so this one launch
    also proves ``torchrun ... -m arvid`` works from the root (a second launch cost ~15 s)."""
    from safetensors.torch import load_file

    args = ["generate", "--preset", "tiny", "--frames", "18", "--switch-frames", "6,15", "--quiet"]
    args += ["--prompt", "a fox", "--prompt", "a cat", "--prompt", "a owl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    from arvid.cli import main

    assert main([*args, "--out", str(one)]) == 0  # the one-process reference, in this process
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "arvid"]
    run = subprocess.run(
        [*launch, *args, "--sequence-parallel", "2", "--out", str(two)],
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for r in range(2):  # each rank reports its time per chunk and its share in collectives
        assert re.search(rf"rank {r}: [0-9.]+ ms per chunk, [0-9.]+ ms in collectives", run.stderr), run.stderr[-2000:]
    assert run.stdout.count("wrote ") == 1  # rank 0 only
    a, b = load_file(str(one))["latents"], load_file(str(two))["latents"]
    assert_rel_close(b, a, "torchrun latents")


def test_sequence_x_data_parallel(sp_run):
    """4 ranks as 2 data-parallel groups of 2: each group's stream is the one-process stream of its seed."""
    size, ranks, ref = sp_run
    if size != 4:
        pytest.skip("data parallel runs at 4 ranks")
    for r, res in enumerate(ranks):
        group, got = r // 2, res["dp"]
        assert got["shard"] == [[0, 2, 4], [1, 3]][group], f"rank {r}"
        want_latents, want_caches = ref["dp", group]
        assert_rel_close(got["latents"], want_latents, f"rank {r} (group {group}) latents")
        hn = want_caches[0][0].shape[3] // 2
        sl = slice((r % 2) * hn, (r % 2 + 1) * hn)
        for ci, ((k, v), (wk, wv)) in enumerate(zip(got["caches"], want_caches, strict=True)):
            assert_rel_close(k, wk[:, :, :, sl], f"rank {r} K cache after chunk {ci}")
            assert_rel_close(v, wv[:, :, :, sl], f"rank {r} V cache after chunk {ci}")
    assert ranks[0]["dp"]["trace"] == ranks[1]["dp"]["trace"]
    assert ranks[2]["dp"]["trace"] == ranks[3]["dp"]["trace"]


def test_triton_backend_sequence_parallel(sp_run):
    """triton at 4 ranks (its attention kernel over one head per rank; the append runs in PyTorch, since
    the fused kernel's q/k norm spans all heads) gives the one-process triton run."""
    size, ranks, ref = sp_run
    if size != 4:
        pytest.skip("triton runs at 4 ranks (the interpreter is slow)")
    want_latents, want_caches = ref["triton"]
    for r, res in enumerate(ranks):
        got = res["triton"]
        assert_rel_close(got["latents"], want_latents, f"rank {r} latents")
        for ci, ((k, v), (wk, wv)) in enumerate(zip(got["caches"], want_caches, strict=True)):
            assert_rel_close(k, wk[:, :, :, r : r + 1], f"rank {r} K cache after chunk {ci}")
            assert_rel_close(v, wv[:, :, :, r : r + 1], f"rank {r} V cache after chunk {ci}")
        assert got["trace"] == ranks[0]["triton"]["trace"]


# Collectives of torch 2.13 that torch 2.11 (the GPU image) lacks: the code must not call them.
NEWER_THAN_211 = ("all_gather_single",)
# Removed from the public namespace only: in 2.13 torch's own all_gather_into_tensor calls the c10d one.
_WITHOUT_NEWER = """import sys, runpy, torch.distributed as d
for n in {names!r}:
    if hasattr(d, n):
        delattr(d, n)
sys.argv = ["arvid", *sys.argv[1:]]
runpy.run_module("arvid", run_name="__main__")
"""


def test_gather_tokens_uses_collectives_of_torch_211(monkeypatch, tmp_path):
    import torch.distributed as dist

    from arvid.runtime.parallel import SequenceParallel

    for name in NEWER_THAN_211:
        monkeypatch.delattr(dist, name, raising=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(2, 5, 3)
        assert torch.equal(SequenceParallel().gather_tokens(x), x)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torchrun_generate_without_collectives_newer_than_torch_211(tmp_path):
    """Sequence parallel under torchrun with the 2.13-only collectives deleted still writes its video."""
    from safetensors.torch import load_file

    script = tmp_path / "arvid_211.py"
    script.write_text(_WITHOUT_NEWER.format(names=NEWER_THAN_211))
    args = ["generate", "--preset", "tiny", "--frames", "12", "--quiet", "--prompt", "a fox"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    run = subprocess.run(
        [*launch, *args, "--sequence-parallel", "2", "--out", str(tmp_path / "two.safetensors")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_file(str(tmp_path / "two.safetensors"))["latents"].shape[1] == 12
