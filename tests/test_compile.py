"""Regional torch.compile of the model: same latents, same parameter names (CPU inductor)."""

import copy

import pytest
import torch

from arvid.bench.stream_bench import run_stream_bench
from arvid.runtime import GeneratorOptions, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.mark.slow
def test_compiled_regions_give_the_same_latents():
    model = build_model(TINY.model)
    compiled = copy.deepcopy(model).compile_regions()
    assert list(compiled.state_dict()) == list(model.state_dict())
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 15, 16, 8, 8, generator=g)
    prompts = [torch.randn(1, 16, 32, generator=g) for _ in range(2)]
    out = {}
    for name, m in (("eager", model), ("compiled", compiled)):
        gen = StreamingGenerator(m, latent_size=(8, 8), backend="sdpa")
        out[name] = gen.generate(noise, prompts, (9,), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out["compiled"], out["eager"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bench_runs_a_compiled_variant():
    report = run_stream_bench(
        "tiny",
        device=torch.device("cpu"),
        dtype=torch.float32,
        backends=["sdpa", "sdpa+compile"],
        frames=9,
        warmup=1,
        rounds=1,
    )
    compiled = report["variants"][1]
    assert compiled["backend"] == "sdpa+compile"
    assert compiled["max_abs_diff_vs_baseline"] < 1e-5
    assert len(compiled["memory_bytes_per_chunk"]) == 3 and len(compiled["host_ms"]) == 2


def test_variant_specs():
    v = GeneratorOptions.from_variant
    assert v("triton+graphs+compile") == GeneratorOptions(backend="triton", graphs=True, compile=True)
    assert v("eager") == GeneratorOptions(backend="eager")
    assert v("sdpa+fp8kv") == GeneratorOptions(backend="sdpa", fp8kv=True)
    assert v("functional+chunk") == GeneratorOptions(backend="functional", engine_flags=frozenset({"chunk"}))
    for spec in ("triton+graphs+compile", "sdpa+stepgraphs+fp8kv", "functional+chunk"):
        assert v(spec).variant == spec
    with pytest.raises(ValueError, match="unknown option"):
        v("sdpa+fast")
    with pytest.raises(ValueError, match="unknown attention backend or engine"):
        v("nosuch")
    with pytest.raises(ValueError, match="choose one of"):
        v("sdpa+graphs+stepgraphs")


class RecordingBackend:
    """A Dynamo backend that runs each graph eagerly and records its ops and every call of it."""

    def __init__(self) -> None:
        self.graph_ops: list[set[str]] = []
        self.calls: list[int] = []

    def __call__(self, gm, example_inputs):
        index = len(self.graph_ops)
        self.graph_ops.append({getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes})

        def run(*args):
            self.calls.append(index)
            return gm.forward(*args)

        return run

    def calls_of(self, op: str) -> int:
        return sum(1 for i in self.calls if op in self.graph_ops[i])


def test_every_blocks_ffn_and_cross_attention_run_compiled():
    # nn.Sequential.compile() gave Dynamo nothing (it does not trace torch.nn's own forward): the FFN,
    # ~2/3 of a block's linear FLOPs, ran eagerly under +compile.
    model = build_model(TINY.model)
    rec = RecordingBackend()
    model.compile_regions(backend=rec)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 6, 16, 8, 8, generator=g)
    prompts = [torch.randn(1, 16, 32, generator=g)]
    gen = StreamingGenerator(model, latent_size=(8, 8), backend="sdpa")
    gen.generate(noise, prompts, (), generator=torch.Generator().manual_seed(1))
    forwards = 2 * 5  # 2 chunks of 4 denoising forwards + the clean-context update
    layers = TINY.model.num_layers
    assert rec.calls_of("gelu") == forwards * layers, rec.graph_ops  # each block's FFN, every forward
    assert rec.calls_of("scaled_dot_product_attention") == forwards * layers, rec.graph_ops  # cross-attention


def _bench_switching(monkeypatch, warm: bool) -> dict:
    import functools

    from arvid.runtime.model import CausalWanModel

    # Dynamo alone (backend "eager"): the recompiles are Dynamo's, Inductor would only add minutes.
    monkeypatch.setattr(
        CausalWanModel, "compile_regions", functools.partialmethod(CausalWanModel.compile_regions, backend="eager")
    )
    if not warm:
        monkeypatch.setattr(CausalWanModel, "warm_compiled_regions", lambda self, *a, **k: None)
    return run_stream_bench(
        "tiny", device=torch.device("cpu"), dtype=torch.float32, backends=["sdpa", "sdpa+compile"],
        frames=18, warmup=1, rounds=2, switch_frames=(9,),
    )  # fmt: skip


def test_bench_compiles_recache_shapes_before_timing(monkeypatch):
    torch._dynamo.reset()
    report = _bench_switching(monkeypatch, warm=True)
    assert [v["recompiles"] for v in report["variants"]] == [0, 0]
    assert not [w for w in report["warnings"] if "Dynamo" in w]


def test_bench_records_and_warns_about_compiles_in_timed_chunks(monkeypatch):
    torch._dynamo.reset()
    report = _bench_switching(monkeypatch, warm=False)
    compiled = report["variants"][1]
    assert compiled["recompiles"] > 0  # the 9-frame re-cache at the switch, first seen in a timed chunk
    assert any(w.startswith("sdpa+compile: Dynamo compiled") for w in report["warnings"]), report["warnings"]
