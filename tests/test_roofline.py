"""Roofline arithmetic: DESIGN.md's hand numbers, a hand count for the tiny preset, the model itself."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from arvid.bench.roofline import (
    GPUS,
    chunk_work,
    dit_parameters,
    format_roofline,
    gpu_key_for_device,
    measured_over_ceiling,
    roofline,
    wan_vae_decode_work,
)
from arvid.cli import build_parser
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
from arvid.runtime.model import CausalWanModel

WAN = "wan2.1-t2v-1.3b"
T = 1e12


def test_design_md_work_per_chunk_at_832x480():
    w = chunk_work(WAN)
    assert (w["query_tokens"], w["kv_tokens"], w["forwards_per_chunk"]) == (3 * 1560, 12 * 1560, 5)
    f = w["flops_per_forward"]
    # DESIGN.md: 11.7 + 16.2 + 0.4 = 28.3 TFLOP per forward, 141 per chunk of 5 forwards.
    assert f["linear"] / T == pytest.approx(11.7, rel=0.01)
    assert f["self_attention"] / T == pytest.approx(16.2, rel=0.01)
    assert round(f["cross_attention"] / T, 1) == 0.4
    assert f["cross_attention"] == 30 * 4 * 4680 * 512 * 1536  # 0.44 TFLOP, exactly
    assert f["embed_head"] / T < 0.01  # "tiny"
    assert w["flops_per_forward_total"] / T == pytest.approx(28.3, rel=0.01)
    assert w["flops_per_chunk_total"] / T == pytest.approx(141, rel=0.01)
    # KV cache: 3.2 GiB in bf16, 1.6 GiB in FP8 at batch 1 (DESIGN.md)
    assert w["kv_cache_bytes"] / 2**30 == pytest.approx(3.2, abs=0.05)
    assert chunk_work(WAN, precision="fp8")["kv_cache_bytes"] / 2**30 == pytest.approx(1.6, abs=0.05)


def test_h100_ceilings_match_design_md():
    bf16 = roofline(WAN, "h100", "bf16")
    assert bf16["dit"]["ms"] == pytest.approx(143, rel=0.01)
    assert bf16["dit"]["fps_ceiling"] == pytest.approx(84, rel=0.01)
    assert bf16["dit"]["bound"] == "compute"  # DESIGN.md: "the work is compute-bound"
    fp8 = roofline(WAN, "h100", "fp8")
    assert fp8["dit"]["fps_ceiling"] == pytest.approx(168, rel=0.01)
    int8 = roofline(WAN, "h100", "int8")  # only the linear layers speed up
    assert bf16["dit"]["fps_ceiling"] < int8["dit"]["fps_ceiling"] < fp8["dit"]["fps_ceiling"]
    for r in (bf16, fp8, int8):
        assert r["end_to_end"]["fps_ceiling"] < r["dit"]["fps_ceiling"]
        assert r["end_to_end"]["ms"] == pytest.approx(r["dit"]["ms"] + r["vae"]["ms"])
    h200 = roofline(WAN, "h200", "bf16")  # same compute, more bandwidth: same compute-bound ceiling
    assert h200["dit"]["fps_ceiling"] == pytest.approx(bf16["dit"]["fps_ceiling"])
    assert h200["dit"]["memory_ms"] < bf16["dit"]["memory_ms"]


def test_tiny_preset_by_hand():
    # tiny: dim 64, ffn 128, 2 layers, 2 heads, text_len 16, freq_dim 32, latent 8x8 -> 4x4 = 16 tokens/frame
    w = chunk_work("tiny")
    lq, lk = 3 * 16, 12 * 16
    assert (w["query_tokens"], w["kv_tokens"]) == (lq, lk)
    f = w["flops_per_forward"]
    assert f["linear"] == 48 * 2 * 2 * (6 * 64 * 64 + 2 * 64 * 128) == 7_864_320
    # patch embedding 16*1*2*2 -> 64, head 64 -> 16*4, per token; time MLP + projection per frame (3)
    assert f["embed_head"] == 48 * 2 * (64 * 64 + 64 * 64) + 3 * 2 * (32 * 64 + 64 * 64 + 64 * 384) == 970_752
    assert f["self_attention"] == 2 * 4 * 48 * 192 * 64 == 4_718_592
    assert f["cross_attention"] == 2 * 4 * 48 * 16 * 64 == 393_216
    assert w["flops_per_chunk_total"] == 5 * (7_864_320 + 970_752 + 4_718_592 + 393_216)
    # bytes in bf16: K and V of 192 valid + 48 written + 16 text tokens, 64 wide, 2 layers
    assert w["bytes_per_forward"]["kv_cache"] == 2 * 2 * 64 * (192 + 48 + 16) * 2
    assert w["kv_cache_bytes"] == 2 * 2 * 192 * 64 * 2


@pytest.mark.parametrize("name", ["tiny", WAN])
def test_parameter_count_matches_the_model(name):
    cfg = get_preset(name).model
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    assert dit_parameters(cfg)["total"] == sum(p.numel() for p in model.parameters())


def _counted(model, x, t, text_kv, **kw) -> int:
    # The math SDPA backend decomposes into bmm, which FlopCounterMode counts.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x, t, text_kv, **kw)
    return fc.get_total_flops()


def test_flops_match_torch_flop_counter_on_the_tiny_model():
    p = get_preset("tiny")
    model = build_model(p.model, seed=0)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, p.model.text_len, p.model.text_dim, generator=g)
    with torch.no_grad():
        text_kv = model.text_kv(emb)
    # no cache: 12 frames attending to each other = a 12-frame chunk with a 12-frame attention span
    x = torch.randn(1, 12, 16, 8, 8, generator=g)
    whole = chunk_work(p, StreamConfig(chunk_frames=12, sink_frames=0, attention_frames=12))
    assert _counted(model, x, torch.full((1, 12), 500.0), text_kv) == whole["flops_per_forward_total"]
    # steady state of the ring cache: after 4 chunks, one whole chunk (5 forwards) through the public
    # streaming API; the prompt's K/V were computed before the first chunk, so are not counted.
    gen = StreamingGenerator(model, latent_size=(8, 8), backend="sdpa")
    it = gen.stream(torch.randn(1, 15, 16, 8, 8, generator=g), [emb])
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for _ in range(4):
            next(it)
        with FlopCounterMode(display=False) as fc:
            next(it)
    assert fc.get_total_flops() == chunk_work(p)["flops_per_chunk_total"]


def test_fill_phase_and_batch():
    steady = chunk_work(WAN)
    first = chunk_work(WAN, chunk_index=0)
    assert first["kv_tokens"] == 3 * 1560 and first["phase"] == "chunk 0"
    assert first["flops_per_forward"]["self_attention"] * 4 == steady["flops_per_forward"]["self_attention"]
    assert first["flops_per_forward"]["linear"] == steady["flops_per_forward"]["linear"]
    assert chunk_work(WAN, chunk_index=3)["flops_per_chunk"] == steady["flops_per_chunk"]  # 4 slots full
    assert chunk_work(WAN, chunk_index=50)["kv_tokens"] == steady["kv_tokens"]
    assert roofline(WAN, "h100", chunk_index=0)["dit"]["fps_ceiling"] > roofline(WAN, "h100")["dit"]["fps_ceiling"]
    two = chunk_work(WAN, batch_size=2)
    assert two["flops_per_chunk_total"] == 2 * steady["flops_per_chunk_total"]
    assert two["bytes_per_forward"]["weights"] == steady["bytes_per_forward"]["weights"]  # read once per batch
    assert roofline(WAN, "h100", batch_size=2)["video_frames_per_chunk"] == 24
    # a longer attention span costs more self-attention only
    long = chunk_work(WAN, StreamConfig(attention_frames=21))
    assert long["flops_per_forward"]["self_attention"] == pytest.approx(
        steady["flops_per_forward"]["self_attention"] * 21 / 12
    )


def test_quantized_bytes():
    bf16, int8, fp8 = (chunk_work(WAN, precision=p) for p in ("bf16", "int8", "fp8"))
    assert bf16["flops_per_chunk"] == int8["flops_per_chunk"] == fp8["flops_per_chunk"]
    assert bf16["model_bytes"] == 2 * dit_parameters(get_preset(WAN).model)["total"]
    assert int8["model_bytes"] < 0.6 * bf16["model_bytes"]
    assert int8["bytes_per_forward"]["kv_cache"] == bf16["bytes_per_forward"]["kv_cache"]  # attention stays bf16
    assert fp8["bytes_per_forward"]["kv_cache"] * 2 == bf16["bytes_per_forward"]["kv_cache"]


def test_wan_vae_decoder_by_hand():
    # Per latent frame at 60x104 (steady state: 4 video frames of 480x832), stage by stage.
    hw0 = 60 * 104
    hw1, hw2, hw3 = 4 * hw0, 16 * hw0, 64 * hw0

    def c3(cin, cout, frames, hw):  # 3x3x3 causal conv
        return 2 * cin * cout * 27 * frames * hw

    conv2_conv1 = 2 * 16 * 16 * hw0 + c3(16, 384, 1, hw0)
    middle = 4 * c3(384, 384, 1, hw0) + 2 * 384 * 1152 * hw0 + 4 * hw0 * hw0 * 384 + 2 * 384 * 384 * hw0
    stage0 = 6 * c3(384, 384, 1, hw0) + 2 * 384 * 768 * 3 * hw0 + 2 * (2 * 384 * 192 * 9 * hw1)
    stage1 = (
        2 * (c3(192, 384, 1, hw1) + 2 * 192 * 384 * hw1 + 5 * c3(384, 384, 1, hw1))
        + 2 * (2 * 384 * 768 * 3 * hw1)
        + 4 * (2 * 384 * 192 * 9 * hw2)
    )
    stage2 = 4 * 6 * c3(192, 192, 1, hw2) + 4 * (2 * 192 * 96 * 9 * hw3)
    stage3 = 4 * 6 * c3(96, 96, 1, hw3)
    head = 4 * c3(96, 3, 1, hw3)
    per_latent_frame = conv2_conv1 + middle + stage0 + stage1 + stage2 + stage3 + head
    vae = wan_vae_decode_work(60, 104)
    assert vae["flops"] == per_latent_frame
    assert vae["video_frames"] == 4
    assert per_latent_frame / T == pytest.approx(13.55, abs=0.01)
    # a chunk of 3 latent frames: ~40.7 TFLOP, near DESIGN.md's "roughly 35-40"
    assert chunk_work(WAN)["vae"]["flops"] == 3 * per_latent_frame
    given = roofline(WAN, "h100", vae_tflop_per_chunk=37.5)
    assert given["vae"]["tflop"] == 37.5 and given["vae"]["source"].startswith("given")
    assert given["dit"] == roofline(WAN, "h100")["dit"]


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown GPU 'h1000'.*'h100'"):
        roofline(WAN, "h1000")
    with pytest.raises(ValueError, match=r"unknown precision 'fp4'.*'bf16', 'fp8', 'int8'"):
        roofline(WAN, "h100", "fp4")
    with pytest.raises(ValueError, match="no fp8"):
        roofline(WAN, "a100", "fp8")
    with pytest.raises(ValueError, match="unknown preset"):
        chunk_work("wan9")
    with pytest.raises(ValueError, match="chunk_index"):
        chunk_work(WAN, chunk_index=-1)
    with pytest.raises(ValueError, match="batch_size"):
        chunk_work(WAN, batch_size=0)
    with pytest.raises(ValueError, match="vae_tflop_per_chunk"):
        chunk_work(WAN, vae_tflop_per_chunk=-1)


def test_every_gpu_has_datasheet_peaks():
    for key, g in GPUS.items():
        assert g.bf16_tflops > 0 and g.bandwidth_tbs > 0 and g.source, key
        r = roofline(WAN, key, "bf16")
        assert "datasheet, not measured" in format_roofline(r)


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA H200", "h200"),
        ("NVIDIA GeForce RTX 5090", None),  # no sourced peaks: no ceiling
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-PCIE-40GB", None),
        ("NVIDIA L40S", "l40s"),
        ("Intel(R) Xeon(R) Platinum 8480+", None),
        (None, None),
    ],
)
def test_gpu_key_for_device(name, key):
    assert gpu_key_for_device(name) == key


def _fake_report(device_name: str, dtype: str = "bfloat16") -> dict:
    return {
        "schema": "arvid.stream_bench/1",
        "preset": WAN,
        "dtype": dtype,
        "batch_size": 1,
        "chunks": 10,
        "warmup_chunks": 2,
        "stream": {**StreamConfig().__dict__, "denoising_steps": [1000, 750, 500, 250]},
        "environment": {"device_name": device_name},
        "variants": [
            {"backend": "eager", "video_fps_dit_only": 20.0},
            {"backend": "triton", "video_fps_dit_only": 40.0},
        ],
    }


def test_measured_over_ceiling():
    out = measured_over_ceiling(_fake_report("NVIDIA H100 80GB HBM3"))
    assert out["gpu"] == "h100" and out["precision"] == "bf16"
    # timed chunks 2..9: chunks 2 (9 frames seen) is cheaper than the steady state
    steady = roofline(WAN, "h100")["dit"]["fps_ceiling"]
    assert steady < out["ceiling_fps_dit_only"] < roofline(WAN, "h100", chunk_index=2)["dit"]["fps_ceiling"]
    fractions = [v["fraction_of_ceiling"] for v in out["variants"]]
    assert fractions[1] == pytest.approx(2 * fractions[0])
    assert fractions[0] == pytest.approx(20.0 / out["ceiling_fps_dit_only"])
    assert measured_over_ceiling(_fake_report("AMD EPYC 9654")) is None  # a CPU run: no ceiling
    assert measured_over_ceiling(_fake_report("NVIDIA H100 80GB HBM3", "float32")) is None
    assert measured_over_ceiling(_fake_report("AMD EPYC 9654"), gpu="h200")["gpu"] == "h200"
    with pytest.raises(ValueError, match="stream_bench"):
        measured_over_ceiling({"schema": "other"})


def _cli(argv):
    """`arvid roofline ARGV` with ValueError raised (``arvid.cli.main`` would print it and return 2)."""
    args = build_parser().parse_args(["roofline", *argv])
    return args.func(args)


def test_cli(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert _cli(["--gpu", "h100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| h100 | bf16 |" in text and "| h100 | fp8 |" in text and "| h100 | int8 |" in text
    assert "83.9" in text and "167.8" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "arvid.roofline/1" and len(data["results"]) == 3
    assert _cli(["--gpu", "a100"]) == 0  # "all" skips the precisions a GPU does not have
    assert "| a100 | fp8 |" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown GPU"):
        _cli(["--gpu", "b300"])
    with pytest.raises(ValueError, match="unknown precision"):
        _cli(["--gpu", "h100", "--precision", "fp4"])
