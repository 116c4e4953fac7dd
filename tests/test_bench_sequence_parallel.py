"""``arvid bench --sequence-parallel N`` on the CPU with gloo: the launch line, the report, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from arvid.bench.stream_bench import run_stream_bench

pytestmark = pytest.mark.usefixtures("one_thread")
BENCH = ["bench", "--preset", "tiny", "--backend", "eager,sdpa", "--frames", "9", "--rounds", "1", "--warmup", "1"]


@pytest.mark.slow
def test_torchrun_bench_reports_ranks_and_whole_job(tmp_path):
    """2 ranks under torchrun: rank 0 writes the JSON with per-rank and whole-job latency and comm time;
    the whole job's chunk latency is the max over ranks; the max diff vs baseline is the one-process run's."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "arvid"]
    out = tmp_path / "out.json"
    run = subprocess.run(
        [*launch, *BENCH, "--sequence-parallel", "2", "--json", str(out), "--yes", "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("| sdpa |") == 3  # one report (a row in each of its 3 tables), rank 0 only
    assert "arvid bench: rank 1: own chunk p50 ms: eager " in run.stderr
    assert "rank 0: own" not in run.stderr
    report = json.loads(out.read_text())
    assert report["sequence_parallel"] == 2
    for v in report["variants"]:
        spv = v["sequence_parallel"]
        assert spv["size"] == 2 and len(spv["rank_chunk_ms_p50"]) == 2 and len(spv["rank_comm_ms"]) == 2
        assert all(len(ms) == 2 for ms in spv["rank_chunk_ms"] + spv["rank_comm_ms"])  # 3 chunks, 1 warm-up
        assert v["chunk_ms"] == [max(a, b) for a, b in zip(*spv["rank_chunk_ms"], strict=True)]
        assert spv["job_chunk_ms_p50"] == v["chunk_ms_p50"] >= max(spv["rank_chunk_ms_p50"])
        assert 0 < spv["comm_ms_per_chunk"] < v["chunk_ms_p50"]
        assert all(0 < c <= t for cs, ts in zip(spv["rank_comm_ms"], spv["rank_chunk_ms"], strict=True)
                   for c, t in zip(cs, ts, strict=True))  # fmt: skip
    one = run_stream_bench(
        "tiny", device=torch.device("cpu"), dtype=torch.float32, backends=["eager", "sdpa"], frames=9, warmup=1,
        rounds=1,
    )  # fmt: skip
    assert "sequence_parallel" not in one["variants"][1] and one["sequence_parallel"] == 1
    base, sdpa = (v["max_abs_diff_vs_baseline"] for v in report["variants"])
    assert base == 0.0
    assert abs(sdpa - one["variants"][1]["max_abs_diff_vs_baseline"]) <= 1e-5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sequence-parallel", "4"], "--sequence-parallel 4: the model's 2 heads are not divisible by 4"),
        (["--sequence-parallel", "2"], "--sequence-parallel 2 needs 2 processes: launch with torchrun"),
        (
            ["--sequence-parallel", "2", "--backend", "eager,sdpa+graphs"],
            "variant 'sdpa+graphs': --sequence-parallel runs the attention backends eagerly",
        ),
        (
            ["--sequence-parallel", "2", "--backend", "eager,functional"],
            "variant 'functional': --sequence-parallel runs",
        ),
        (["--sequence-parallel", "2", "--vae"], "--vae with --sequence-parallel"),
    ],
)
def test_bench_refuses_bad_sequence_parallel_before_loading(extra, message, capsys, monkeypatch):
    import arvid.commands.bench as bench_cmd
    from arvid.cli import main

    def no_load(*a, **kw):
        raise AssertionError("the model loaded")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(bench_cmd, "load_model_from_args", no_load)
    assert main([*BENCH, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"arvid bench: error: {message}"), err
    assert len(err.splitlines()) == 1
