"""INT8 / FP8 weights on the tiny preset: numerics, quantize_, accuracy bounds, drift, save / load.

Where the SQNR bounds come from
-------------------------------
A uniform quantizer with step D adds noise of power D^2 / 12. Symmetric per-row int8 (torchao's
scale amax / 127.5) has D = amax / 127.5, so for a row of standard deviation s with loading
factor k = amax / s:  SQNR = 10 log10(12 * 127.5^2 / k^2) = 6.02 * 8 + 4.77 - 20 log10(k) dB
(the textbook 6.02 b + 4.77 - 20 log10(k)). Gaussian rows of 64 / 1536 / 8960 values have k ~ 2.6 /
3.6 / 4.0: 44.6 / 41.9 / 40.9 dB.

e4m3 keeps 3 mantissa bits: a value m * 2^e (m in [1, 2)) is rounded with step 2^(e-3), relative
noise power 2^-6 / (12 m^2). With log-uniformly distributed mantissas (E[1/m^2] = 0.375 / ln 2 =
0.541) that is 7.0e-4 of the signal: SQNR = 31.5 dB per tensor, independent of the scale as long
as values stay above the subnormal range (2^-6 * amax / 448: nothing of a Gaussian row).

A layer whose two operands are rounded independently at S_w and S_x dB has an output SQNR of about
-10 log10(10^(-S_w/10) + 10^(-S_x/10)): ~41.5 dB for int8 W8A8 on 64-wide rows (both ~44.6), 28.5 dB
for e4m3 W8A8, ~44.6 dB for int8 weight-only. End to end (latents after 4 denoising steps and the
cache), the errors of the quantized layers add up; the bounds below allow them 4x the power of
one layer's error (-6 dB): int8 >= 35 dB, int8 weight-only >= 38 dB, fp8 >= 22 dB. Measured on this
model (tiny, seed 0, 12 latent frames): 43.2 / 45.6 / 32.0 dB. These bounds catch gross failures
and sit well above the 20 dB PASS convention; they do not pin the recipe (on this model int8
with per-tensor scales measured 39.8 dB, truncation instead of rounding 35.1 dB): the recipe is
pinned by the per-tensor theory tests and the exact per-layer tests below.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arvid.quant import (
    Fp8Config,
    Fp8EmulatedLinear,
    Int8Config,
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
    MissingDependencyError,
    config_for_scheme,
    load_quantized,
    model_size_report,
    quantize_,
    save_quantized,
)
from arvid.quant.fp8 import quantize_e4m3_rows
from arvid.quant.int8 import quantize_int8_rows
from arvid.quant.metrics import sqnr_db
from arvid.quant.quality import compare_streams
from arvid.runtime import StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
SCHEMES = ["int8", "int8-weight-only", "fp8"]
MODULES = {"int8": Int8DynamicLinear, "int8-weight-only": Int8WeightOnlyLinear, "fp8": Fp8EmulatedLinear}
# End-to-end latent SQNR bounds, derived in the module docstring.
E2E_MIN_SQNR_DB = {"int8": 35.0, "int8-weight-only": 38.0, "fp8": 22.0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


def _inputs(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, frames, TINY.model.in_dim, *HW, generator=g)
    return noise, [torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g)]


def _generate(m, frames, seed=0):
    noise, prompts = _inputs(frames, seed)
    gen = StreamingGenerator(m, latent_size=HW, backend="sdpa")
    return gen.generate(noise, prompts, generator=torch.Generator().manual_seed(seed + 1))


# -- numerics of one tensor / one layer ------------------------------------------------------


@pytest.mark.parametrize("k", [64, 1536])
def test_int8_weight_sqnr_matches_uniform_quantizer_theory(k):
    w = torch.randn(256, k, generator=torch.Generator().manual_seed(k))
    q, s = quantize_int8_rows(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (256,)
    measured = sqnr_db(w, q.float() * s[:, None])
    # noise power per row (amax / 127.5)^2 / 12, averaged over rows, against the mean signal power
    predicted = 10 * math.log10(12 * 127.5**2 * w.pow(2).mean().item() / w.abs().amax(1).pow(2).mean().item())
    assert abs(measured - predicted) < 0.5, (measured, predicted)


@pytest.mark.parametrize("k", [64, 1536])
def test_e4m3_weight_sqnr_matches_three_mantissa_bits(k):
    w = torch.randn(256, k, generator=torch.Generator().manual_seed(k))
    q, s = quantize_e4m3_rows(w)
    assert q.dtype == torch.float8_e4m3fn and q.float().abs().max() <= 448
    assert torch.allclose(s, w.abs().amax(1) / 448)
    assert 30.5 < sqnr_db(w, q.float() * s[:, None]) < 32.5  # 31.5 dB derived above


def _reference_w8a8(x, lin, quant):
    """Independent float64 recipe: quantize both operands per row, multiply, rescale, add bias."""
    qx, sx = quant(x)
    qw, sw = quant(lin.weight.detach())
    y = (qx.double() @ qw.double().t()) * sx.double()[:, None] * sw.double()[None, :]
    return (y + lin.bias.double()).float()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_layer_matches_its_recipe(scheme):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 40)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g) / 10)
    x = torch.randn(2, 7, 96, generator=g)
    q = MODULES[scheme].from_linear(lin)
    y = q(x)
    assert y.shape == (2, 7, 40) and y.dtype == x.dtype
    x2 = x.reshape(-1, 96)
    if scheme == "int8":
        want = _reference_w8a8(x2, lin, quantize_int8_rows)
    elif scheme == "fp8":
        want = _reference_w8a8(x2, lin, quantize_e4m3_rows)
    else:
        qw, sw = quantize_int8_rows(lin.weight.detach())
        want = F.linear(x2, qw.float() * sw[:, None], lin.bias)
    torch.testing.assert_close(y.reshape(-1, 40), want, rtol=1e-5, atol=1e-5)
    assert q.weight.dtype == torch.float32  # the dtype probe the model uses (layer.weight.dtype)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_activation_scales_are_per_token(scheme):
    """A token with a 1000x outlier leaves the other tokens' outputs bit-identical (dynamic per-token
    scales); a per-tensor activation scale would wipe out their precision."""
    g = torch.Generator().manual_seed(1)
    q = MODULES[scheme].from_linear(nn.Linear(64, 32))
    x = torch.randn(6, 64, generator=g)
    y = q(x)
    x_out = x.clone()
    x_out[0] *= 1000
    assert torch.equal(q(x_out)[1:], y[1:])


# -- quantize_ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_replaces_block_linears_and_keeps_sensitive_layers(model, scheme):
    q = quantize_(copy.deepcopy(model), config_for_scheme(scheme))
    cls = MODULES[scheme]
    names = {n for n, m in q.named_modules() if isinstance(m, cls)}
    assert len(names) == TINY.model.num_layers * 10  # q, k, v, o x 2 attentions + ffn.0, ffn.2
    assert all(n.startswith("blocks.") for n in names)
    for kept in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"):
        assert type(q.get_submodule(kept)) is nn.Linear
    assert type(q.time_projection[1]) is nn.Linear and type(q.head.head) is nn.Linear
    assert q.arvid_quant.layers == tuple(sorted(names, key=list(q.arvid_quant.layers).index))
    assert len(q.arvid_quant.skipped) == 6


def test_skip_is_configurable(model):
    q = quantize_(copy.deepcopy(model), Fp8Config(skip=("blocks.1.*",)))
    assert isinstance(q.head.head, Fp8EmulatedLinear) and isinstance(q.text_embedding[0], Fp8EmulatedLinear)
    assert type(q.blocks[1].ffn[0]) is nn.Linear and isinstance(q.blocks[0].ffn[0], Fp8EmulatedLinear)
    with pytest.warns(UserWarning, match="matches no nn.Linear"):
        quantize_(copy.deepcopy(model), Int8Config(skip=("head.head", "no_such_layer")))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_end_to_end_latent_sqnr(model, scheme):
    want = _generate(model, 12)
    out = _generate(quantize_(copy.deepcopy(model), config_for_scheme(scheme)), 12)
    assert torch.isfinite(out).all()
    assert sqnr_db(want, out) >= E2E_MIN_SQNR_DB[scheme]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_error_does_not_grow_over_100_chunks(model, scheme):
    """300 latent frames = 100 chunks. The ring buffer bounds what a chunk sees (the pinned sink and
    the last 3 chunks), so a quantization error can only feed forward through that window: in a
    stable stream the per-chunk error settles at a stationary level instead of compounding. Check:
    the mean SQNR of the last 10 chunks is at most 3 dB (error power at most doubled) below that of
    the first 10, the least-squares trend loses < 0.03 dB per chunk (< 3 dB over the video), and no
    chunk falls below the end-to-end bound. Measured here (seed 3): the last 10 chunks' mean SQNR
    is 0.01 - 0.16 dB *above* the first 10's for all three schemes; slopes <= 0.001 dB per chunk."""
    noise, prompts = _inputs(300, seed=3)
    variant = quantize_(copy.deepcopy(model), config_for_scheme(scheme))
    report = compare_streams(model, variant, noise=noise, prompts=prompts, seed=3)
    drift = report["summary"]["drift"]
    assert report["summary"]["chunks"] == 100 and drift["window"] == 10
    assert drift["drop_db"] <= 3.0, drift
    assert drift["slope_db_per_chunk"] > -0.03, drift
    assert report["summary"]["latent_sqnr_db_min"] >= E2E_MIN_SQNR_DB[scheme]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
@pytest.mark.parametrize("config", [Int8Config(backend="torchao"), Int8Config(weight_only=True, backend="torchao"),
                                    Fp8Config(backend="torchao")])  # fmt: skip
def test_torchao_configs_on_cpu_say_cuda_is_needed(model, config):
    with pytest.raises(ValueError, match=r"needs a CUDA device|runs torchao's CUDA kernels.*use backend='emulate'"):
        quantize_(copy.deepcopy(model), config)


def test_unmerged_lora_is_refused(model):
    class LoraLinear(nn.Module):  # the attributes peft's LoraLayer has
        def __init__(self, base):
            super().__init__()
            self.base_layer = base
            self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, 4, bias=False)})
            self.lora_B = nn.ModuleDict({"default": nn.Linear(4, base.out_features, bias=False)})

        def forward(self, x):
            return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x))

    m = copy.deepcopy(model)
    m.blocks[0].self_attn.q = LoraLinear(m.blocks[0].self_attn.q)
    with pytest.raises(ValueError, match=r"blocks\.0\.self_attn\.q.*unmerged peft LoRA.*merge"):
        quantize_(m, Int8Config())


def test_bad_configs_and_double_quantization(model):
    with pytest.raises(ValueError, match="backend"):
        Int8Config(backend="tensorrt")
    with pytest.raises(ValueError, match="tuple of fnmatch patterns"):
        Fp8Config(skip="head.head")
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        config_for_scheme("int4")
    with pytest.raises(ValueError, match=r"no nn\.Linear left"):
        quantize_(copy.deepcopy(model), Int8Config(skip=("*",)))
    q = quantize_(copy.deepcopy(model), Int8Config())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(q, Fp8Config())
    assert issubclass(MissingDependencyError, ImportError) and issubclass(MissingDependencyError, ValueError)


# -- on disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_save_load_round_trip_is_exact_and_smaller(tmp_path, scheme):
    from safetensors.torch import save_file

    bf16 = build_model(TINY.model, dtype=torch.bfloat16, seed=0)
    float_file = tmp_path / "bf16.safetensors"
    save_file(bf16.state_dict(), str(float_file))
    q = quantize_(copy.deepcopy(bf16), config_for_scheme(scheme))
    doc = save_quantized(q, tmp_path / "variant", metadata={"note": "test"})
    loaded = load_quantized(tmp_path / "variant")

    assert torch.equal(_generate(loaded, 6), _generate(q, 6))
    for name in q.arvid_quant.layers:
        a, b = q.get_submodule(name), loaded.get_submodule(name)
        assert type(b) is MODULES[scheme] and torch.equal(a.qweight, b.qweight)
        assert torch.equal(a.weight_scale, b.weight_scale)

    sizes = doc["sizes"]
    assert sizes["file_bytes"] < float_file.stat().st_size
    assert sizes["stored_bytes"] == model_size_report(loaded)["stored_bytes"] < sizes["bf16_bytes"]
    assert sizes["bf16_bytes"] == 2 * sum(p.numel() for p in bf16.parameters())
    # quantized layers: 1 byte per weight + a float32 scale per row + a BF16 bias per row
    assert sizes["quantized_layers_bytes"] == sum(
        m.out_features * (m.in_features + 4 + 2) for m in q.modules() if isinstance(m, MODULES[scheme])
    )

    written = json.loads((tmp_path / "variant" / "quant_config.json").read_text())
    assert written["scheme"] == scheme and written["compute_dtype"] == "bfloat16"
    layer = written["quantized_layers"]["blocks.0.ffn.0"]
    assert layer["weight_dtype"] == ("float8_e4m3fn" if scheme == "fp8" else "int8")
    assert layer["scale"] == "blocks.0.ffn.0.weight_scale" and layer["scale_granularity"] == "per output row"
    assert "head.head" in written["skipped"] and written["metadata"] == {"note": "test"}


def test_load_refuses_incomplete_or_foreign_directories(tmp_path, model):
    with pytest.raises(ValueError, match=r"no quant_config\.json"):
        load_quantized(tmp_path)
    save_quantized(quantize_(copy.deepcopy(model), Int8Config()), tmp_path / "v")
    (tmp_path / "v" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors is missing"):
        load_quantized(tmp_path / "v")
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(model, tmp_path / "w")


# -- GPU: the emulation against torchao's kernels ---------------------------------------------


def _torchao_schemes():
    if not torch.cuda.is_available():
        return SCHEMES
    fp8_ok = torch.cuda.get_device_capability() >= (8, 9)
    return [s for s in SCHEMES if s != "fp8" or fp8_ok]


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", _torchao_schemes())
def test_emulation_agrees_with_torchao(scheme):
    """Same numerics: on every quantized layer the emulation is closer to torchao than either is to
    the BF16 layer, by >= 10 dB (two recipes with independent rounding errors of the same size
    would agree ~3 dB *worse* than either's quantization error). Expected residual differences:
    bf16 rounding order, FP8 fast accumulation and, where mslk is installed on sm_90, torchao's own
    FP8 quantize kernel: if this fails for fp8 only, check that first."""
    pytest.importorskip("torchao")
    m = build_model(TINY.model, device="cuda", dtype=torch.bfloat16, seed=0)
    emu = quantize_(copy.deepcopy(m), config_for_scheme(scheme, backend="emulate"))
    ao = quantize_(copy.deepcopy(m), config_for_scheme(scheme, backend="torchao"))
    g = torch.Generator("cuda").manual_seed(0)
    for name in emu.arvid_quant.layers:
        ref_layer, e, a = m.get_submodule(name), emu.get_submodule(name), ao.get_submodule(name)
        xin = torch.randn(48, ref_layer.in_features, device="cuda", dtype=torch.bfloat16, generator=g)
        want, ye, ya = ref_layer(xin), e(xin), a(xin)
        quant_err = min(sqnr_db(want.float(), ye.float()), sqnr_db(want.float(), ya.float()))
        agree = sqnr_db(ya.float(), ye.float())
        assert agree >= quant_err + 10, f"{name}: emulation vs torchao {agree:.1f} dB, quantization {quant_err:.1f} dB"
    want = _generate(m, 12).float()
    e2e_emu, e2e_ao = _generate(emu, 12).float(), _generate(ao, 12).float()
    assert sqnr_db(e2e_ao, e2e_emu) >= min(sqnr_db(want, e2e_emu), sqnr_db(want, e2e_ao)) + 6


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", _torchao_schemes())
def test_torchao_compiled_matches_eager(scheme):
    """compile=True (the fast path) changes no numbers beyond kernel-fusion rounding."""
    pytest.importorskip("torchao")
    m = build_model(TINY.model, device="cuda", dtype=torch.bfloat16, seed=0)
    eager = quantize_(copy.deepcopy(m), config_for_scheme(scheme, backend="torchao"))
    compiled = quantize_(copy.deepcopy(m), config_for_scheme(scheme, backend="torchao", compile=True))
    assert sqnr_db(_generate(eager, 6).float(), _generate(compiled, 6).float()) >= 35


@pytest.mark.parametrize("variant", ["sdpa+int8", "sdpa+int8wo", "sdpa+fp8"])
def test_bench_refuses_quantized_variant_on_cuda_without_torchao(monkeypatch, variant):
    # The emulation would time a float32 GEMM as the variant: refused before any model is built.
    import sys

    from arvid.bench import stream_bench

    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao raises ImportError
    monkeypatch.setattr(stream_bench, "load_dit", lambda **kw: pytest.fail("the model was built"))
    with pytest.raises(ValueError, match=r"needs torchao's kernels .*pip install 'arvid\[quant\]'"):
        stream_bench.run_stream_bench(
            "tiny", device=torch.device("cuda"), dtype=torch.bfloat16, backends=["sdpa", variant], frames=9
        )
    stream_bench.check_variants(["sdpa", variant], torch.device("cpu"))  # the CPU's emulation is the variant


def test_bench_refuses_saved_emulated_model_on_cuda(tmp_path):
    from arvid.bench import stream_bench
    from arvid.quant import Int8Config, quantize_, save_quantized
    from arvid.runtime import build_model, get_preset

    model = quantize_(build_model(get_preset("tiny").model, seed=0), Int8Config())
    save_quantized(model, tmp_path / "int8")
    with pytest.raises(ValueError, match="float32 emulation"):
        stream_bench.check_variants(["sdpa", f"sdpa@{tmp_path / 'int8'}"], torch.device("cuda"))
