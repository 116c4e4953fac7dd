"""Regional torch.compile of the model: same latents, same parameter names (CPU inductor)."""

import copy

import pytest
import torch

from arvid.bench.stream_bench import run_stream_bench
from arvid.runtime import GeneratorOptions, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")


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
        v("flash")
    with pytest.raises(ValueError, match="choose one of"):
        v("sdpa+graphs+stepgraphs")
