"""FP8 (e4m3) KV cache: round-trip error, memory, and the quality of a stream that uses it.

Thresholds, from the format: e4m3 keeps 3 mantissa bits, so rounding a normal value moves it by
at most 2**-4 of its magnitude (half a step of 2**-3), and a tensor rounded once has an SQNR of
about 20*log10(2**4 * sqrt(3)) ~= 29 dB. K and V are rounded once per write; attention then
averages V over many keys and softmax damps K errors, so a stream should lose no more than one
such rounding of its latents: we require >= 25 dB (29 dB less a 4 dB margin) per chunk, and that
the last chunks are not more than 6 dB worse than the first (no drift). Measured on the tiny
preset (fp32 weights, random init, 60 latent frames, switches at 9 and 33): about 56 dB.
"""

import math

import pytest
import torch

from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref
from arvid.runtime import StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
FP8 = torch.float8_e4m3fn


def _sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(ref.pow(2).sum().item() / max((x - ref).pow(2).sum().item(), 1e-30))


def _run(model, backend, frames, switches, kv_dtype):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, frames, 16, *HW, generator=g)
    prompts = [torch.randn(1, 16, 32, generator=g) for _ in range(len(switches) + 1)]
    gen = StreamingGenerator(model, latent_size=HW, backend=backend, kv_cache_dtype=kv_dtype)
    return gen.generate(noise, prompts, switches, generator=torch.Generator().manual_seed(1)), gen


def test_fp8_round_trip_error_is_bounded():
    x = torch.randn(4, 50, 3, 32) * torch.logspace(-3, 3, 50)[None, :, None, None]
    x8, scale = quantize_fp8_per_token_head_ref(x)
    back = x8.float() * scale[..., None]
    # normal range: relative error <= 2**-4; subnormals (below 2**-6 * scale): absolute <= 2**-10 * scale
    bound = torch.maximum(x.abs() * 2**-4, scale[..., None] * 2**-10)
    assert ((back - x).abs() <= bound * (1 + 1e-6)).all()
    # amax maps to 448 exactly; dequantizing (448 * amax/448) is one float32 rounding away from amax
    assert torch.allclose(back.abs().amax(-1), x.abs().amax(-1), rtol=2**-23, atol=0)


def test_fp8_cache_halves_the_memory_of_a_16_bit_cache():
    model = build_model(TINY.model, dtype=torch.float16)
    _, gen16 = _run(model, "sdpa", 3, (), None)
    _, gen8 = _run(model, "sdpa", 3, (), FP8)
    n = gen16.executor.cache.k.numel()
    assert gen16.executor.cache.nbytes == 2 * 2 * n
    # one byte per element + a float32 scale per token and head (4 / D bytes per element)
    assert gen8.executor.cache.nbytes == 2 * n + 2 * 4 * n // TINY.model.head_dim
    assert gen8.executor.cache.k.dtype == FP8


@pytest.mark.slow
def test_fp8_kv_stream_stays_close_and_does_not_drift():
    model = build_model(TINY.model)
    ref, _ = _run(model, "sdpa", 60, (9, 33), None)
    out, _ = _run(model, "sdpa", 60, (9, 33), FP8)
    per_chunk = [_sqnr_db(out[:, c : c + 3], ref[:, c : c + 3]) for c in range(0, 60, 3)]
    assert min(per_chunk) >= 25, per_chunk
    first, last = sum(per_chunk[:5]) / 5, sum(per_chunk[-5:]) / 5
    assert last >= first - 6, per_chunk


@pytest.mark.slow
def test_triton_fp8_cache_matches_sdpa_fp8_cache():
    """Both quantize to the same e4m3 grid; fp16 activations (the precision the GPU runs)."""
    model = build_model(TINY.model, dtype=torch.float16)
    want, _ = _run(model, "sdpa", 24, (9,), FP8)
    out, _ = _run(model, "triton", 24, (9,), FP8)
    # fp16 rounds to 11 bits (~66 dB); two kernels summing in another order stay far above 45 dB.
    assert _sqnr_db(out, want) >= 45
    err = (out - want).abs()
    assert err.max() < 5e-2, f"max abs err {err.max():.3e} at {torch.unravel_index(err.argmax(), err.shape)}"


def test_fp8_cache_needs_a_ring_backend():
    model = build_model(TINY.model)
    with pytest.raises(ValueError, match="model's dtype only"):
        StreamingGenerator(model, latent_size=HW, backend="eager", kv_cache_dtype=FP8)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        StreamingGenerator(model, latent_size=HW, backend="sdpa", kv_cache_dtype=torch.int8)
