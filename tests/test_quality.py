"""Quality metrics on synthetic data, the quality report, and the `arvid quantize` / `arvid quality` commands."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from arvid.cli import build_parser, main
from arvid.quant import Fp8Config, quantize_
from arvid.quant.metrics import (
    FlickerMeter,
    cosine,
    decoded_to_frames,
    drift_stats,
    flicker_stats,
    frame_difference_energy,
    psnr_per_frame,
    relative_error,
    sqnr_db,
    ssim_per_frame,
)
from arvid.quant.quality import compare_streams, write_report
from arvid.runtime import build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- metrics on synthetic data ---------------------------------------------------------------


def test_latent_metrics_on_known_values():
    ref = torch.tensor([3.0, 4.0])
    test = ref + torch.tensor([0.3, 0.4])  # error = 10 % of the signal's norm
    assert sqnr_db(ref, test) == pytest.approx(20.0)
    assert relative_error(ref, test) == pytest.approx(0.1)
    assert cosine(ref, test) == pytest.approx(1.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)
    assert sqnr_db(ref, ref) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(ref, torch.zeros(3))


def test_psnr_and_ssim_on_synthetic_frames():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 32, 40, 3, generator=g) * 0.8 + 0.1
    # a constant offset of 0.1 on [0, 1] frames: MSE 0.01 -> 20 dB exactly
    assert psnr_per_frame(frames, frames + 0.1).tolist() == pytest.approx([20.0] * 4)
    assert torch.isinf(psnr_per_frame(frames, frames)).all()
    assert ssim_per_frame(frames, frames).tolist() == pytest.approx([1.0] * 4)
    # uint8 frames are read as value / 255, the same frames as floats give the same numbers
    u8 = (frames.numpy() * 255).round().astype(np.uint8)
    assert psnr_per_frame(u8, u8[::-1].copy()).tolist() == pytest.approx(
        psnr_per_frame(torch.from_numpy(u8) / 255.0, torch.from_numpy(u8[::-1].copy()) / 255.0).tolist()
    )
    # SSIM of two constant images a, b is the luminance term alone: (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.5, 0.01**2
    s = ssim_per_frame(torch.full((1, 16, 16, 3), a), torch.full((1, 16, 16, 3), b))
    assert s.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # more noise, lower SSIM and PSNR
    mild = frames + 0.02 * torch.randn(frames.shape, generator=g)
    strong = frames + 0.2 * torch.randn(frames.shape, generator=g)
    assert (ssim_per_frame(frames, strong) < ssim_per_frame(frames, mild)).all()
    assert (ssim_per_frame(frames, mild) < 1).all()
    assert (psnr_per_frame(frames, strong) < psnr_per_frame(frames, mild)).all()
    # frames smaller than the 11x11 window still work (largest odd window that fits)
    assert ssim_per_frame(frames[:, :6, :6], frames[:, :6, :6]).tolist() == pytest.approx([1.0] * 4)


def test_flicker_and_drift():
    g = torch.Generator().manual_seed(1)
    static = torch.rand(1, 8, 8, 3, generator=g).expand(6, 8, 8, 3).clone()
    moving = static + torch.linspace(0, 0.5, 6).view(6, 1, 1, 1)  # 0.1 per frame
    assert frame_difference_energy(moving).tolist() == pytest.approx([0.01] * 5)
    flickering = moving + 0.05 * torch.tensor([1.0, -1, 1, -1, 1, -1]).view(6, 1, 1, 1)
    stats = flicker_stats(moving, flickering)
    # frame differences 0.1 -+ 0.1 alternate: 0, 0.2, 0, 0.2, 0 -> energies 0, .04, 0, .04, 0: 0.016 vs 0.01
    assert stats["flicker_ratio"] == pytest.approx(1.6)
    assert flicker_stats(moving, moving)["temporal_sqnr_db"] == math.inf
    d = drift_stats([40.0 - 0.1 * i for i in range(30)], window=10)
    assert d["window"] == 10 and d["first_db"] == pytest.approx(39.55) and d["last_db"] == pytest.approx(37.55)
    assert d["drop_db"] == pytest.approx(2.0) and d["slope_db_per_chunk"] == pytest.approx(-0.1)
    assert drift_stats([30.0, 31.0, 29.0])["window"] == 1
    assert drift_stats([math.inf, 30.0])["drop_db"] == 0.0


def test_flicker_meter_fed_by_chunk_equals_flicker_stats_and_is_not_inverted():
    g = torch.Generator().manual_seed(2)
    moving = torch.rand(1, 4, 4, 3, generator=g) + torch.linspace(0, 0.5, 6).view(6, 1, 1, 1)
    flickering = moving + 0.05 * torch.tensor([1.0, -1, 1, -1, 1, -1]).view(6, 1, 1, 1)
    meter = FlickerMeter()
    for lo, hi in ((0, 3), (3, 6)):  # as `arvid quality` feeds it: chunk by chunk, pairs across the border
        meter.add(moving[lo:hi], flickering[lo:hi])
    assert len(meter.ref) == 5
    assert meter.summary()["flicker_ratio"] == pytest.approx(1.6)  # the variant flickers more: > 1
    assert meter.summary() == pytest.approx(flicker_stats(moving, flickering))
    assert flicker_stats(flickering, moving)["flicker_ratio"] == pytest.approx(1 / 1.6)  # smoother variant: < 1


def _alternating_flow(amplitude):
    """A forward hook that adds +-amplitude to the predicted flow of alternate latent frames."""

    def hook(module, args, out):
        sign = torch.tensor([(-1.0) ** i for i in range(out.shape[1])], dtype=out.dtype, device=out.device)
        return out + amplitude * sign.view(1, -1, 1, 1, 1)

    return hook


def test_quality_report_flicker_ratio_says_which_model_flickers():
    """The flicker `arvid quality` reports (compare_streams) is > 1 for a variant that flickers, < 1 swapped."""
    model = build_model(TINY.model, seed=0)
    flickery = copy.deepcopy(model)
    flickery.register_forward_hook(_alternating_flow(0.5))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 6, TINY.model.in_dim, *HW, generator=g)
    prompts = [torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g)]
    more = compare_streams(model, flickery, noise=noise, prompts=prompts)["summary"]["latent_flicker"]
    less = compare_streams(flickery, model, noise=noise, prompts=prompts)["summary"]["latent_flicker"]
    assert more["flicker_ratio"] > 1.05 and less["flicker_ratio"] < 1 / 1.05, (more, less)


def test_decoded_to_frames():
    video = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 3, 1, 1).expand(1, 2, 3, 4, 5)
    frames = decoded_to_frames(video)
    assert frames.shape == (2, 4, 5, 3) and frames[0, 0, 0].tolist() == [0.0, 0.5, 1.0]


# -- the report ------------------------------------------------------------------------------


def _variant_and_inputs(frames):
    model = build_model(TINY.model, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, frames, TINY.model.in_dim, *HW, generator=g)
    prompts = [torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g) for _ in range(2)]
    return model, quantize_(copy.deepcopy(model), Fp8Config()), noise, prompts


def test_report_without_video(tmp_path):
    model, variant, noise, prompts = _variant_and_inputs(12)
    seen = []
    report = compare_streams(model, variant, noise=noise, prompts=prompts, switch_frames=(6,), on_chunk=seen.append)
    assert [r["chunk"] for r in report["per_chunk"]] == [0, 1, 2, 3] == [r["chunk"] for r in seen]
    for row in report["per_chunk"]:
        assert set(row) == {"chunk", "frame_start", "latent_sqnr_db", "latent_rel_err", "latent_cosine"}
        assert row["latent_rel_err"] == pytest.approx(10 ** (-row["latent_sqnr_db"] / 20))
    s = report["summary"]
    assert s["video"] is None and s["clip"] is None and set(s["drift"]) >= {"drop_db", "slope_db_per_chunk"}
    assert len(report["latent_flicker_per_pair"]["reference"]) == 11  # 12 frames, across chunk borders
    assert report["verdict"]["pass"] is True and "video_psnr" not in report["verdict"]
    report["meta"] = {"scheme": "fp8"}
    paths = write_report(report, tmp_path / "r")
    assert sorted(p.name for p in paths) == ["flicker.png", "latent_sqnr.png", "report.json", "report.md"]
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert doc["summary"]["latent_sqnr_db"] == pytest.approx(s["latent_sqnr_db"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**Verdict: PASS: latent SQNR" in md and "not measured (no VAE decoder)" in md
    assert ">= 20.0 dB; drift" in md and "within 1 +- 0.1" in md  # each check beside its threshold
    assert not list(tmp_path.glob(".r.*"))  # the temporary folder is gone


def test_identical_models_give_infinite_sqnr_in_valid_json(tmp_path):
    model, _, noise, prompts = _variant_and_inputs(6)
    report = compare_streams(model, model, noise=noise, prompts=prompts[:1])
    assert report["summary"]["latent_sqnr_db"] == math.inf
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["latent_sqnr_db"] == "inf"


def test_report_with_decoded_video(tmp_path):
    from arvid.runtime.vae import StreamingVAEDecoder, tiny_vae

    model, variant, noise, prompts = _variant_and_inputs(6)
    vae = tiny_vae(seed=0)
    decoders = (StreamingVAEDecoder(vae), StreamingVAEDecoder(copy.deepcopy(vae)))
    report = compare_streams(model, variant, noise=noise, prompts=prompts[:1], decoders=decoders)
    frames = report["per_frame"]
    assert len(frames) == 1 + 4 * 5  # 6 latent frames -> 21 video frames
    assert all(f["psnr_db"] > 0 and 0 < f["ssim"] <= 1 for f in frames)
    video = report["summary"]["video"]
    assert video["frames"] == 21 and set(video["flicker"]) == {"flicker_ratio", "temporal_sqnr_db"}
    assert {"video_psnr", "video_ssim", "video_flicker"} <= set(report["verdict"])
    names = sorted(p.name for p in write_report(report, tmp_path))
    assert names == ["flicker.png", "latent_sqnr.png", "report.json", "report.md", "video_metrics.png"]


@pytest.fixture
def tiny_clip_dir(tmp_path):
    import transformers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    img = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=img, tokenizer=tok).save_pretrained(tmp_path)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    return tmp_path


def test_clip_score(tiny_clip_dir):
    from arvid.quant.metrics import ClipScorer

    scorer = ClipScorer(str(tiny_clip_dir))
    frames = torch.rand(3, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    s = scorer.score(frames, "a red fox")
    assert s.shape == (3,) and ((s >= 0) & (s <= 100)).all()
    assert torch.equal(s, scorer.score(frames, "a red fox"))


def test_clip_without_model_dir_is_a_clear_error(tmp_path):
    from arvid.quant.metrics import ClipScorer

    with pytest.raises(ValueError, match="CLIP"):
        ClipScorer(str(tmp_path / "missing"))


# -- the commands ----------------------------------------------------------------------------


def test_quantize_then_quality_commands(tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", "--preset", "tiny", "--scheme", "int8", "--dtype", "bf16", "--out", str(out)]) == 0
    assert "ratio" in capsys.readouterr().out
    cfg = json.loads((out / "quant_config.json").read_text())
    assert cfg["sizes"]["file_bytes"] < cfg["sizes"]["bf16_bytes"]
    rep = tmp_path / "rep"
    args = ["quality", "--preset", "tiny", "--dtype", "bf16", "--variant", str(out), "--frames", "6", "--quiet"]
    assert main([*args, "--out", str(rep)]) == 0
    assert "latent SQNR" in capsys.readouterr().out
    doc = json.loads((rep / "report.json").read_text())
    assert doc["meta"]["scheme"].startswith("int8") and doc["sizes"]["ratio"] < 1
    assert {"report.md", "latent_sqnr.png", "flicker.png"} <= {p.name for p in rep.iterdir()}


def test_quality_command_with_scheme_and_errors(tmp_path, capsys):
    rep = tmp_path / "rep"
    args = ["quality", "--preset", "tiny", "--scheme", "int8-weight-only", "--frames", "6", "--quiet"]
    assert main([*args, "--out", str(rep)]) == 0
    assert json.loads((rep / "report.json").read_text())["verdict"]["pass"] is True
    out, err = capsys.readouterr()
    assert "-> PASS: latent SQNR" in out and f"wrote {rep / 'report.md'}" in out and "//" not in out
    assert "stand-in embeddings" in err  # no text encoder: the banner says so
    assert main(["quality", "--scheme", "fp8", "--frames", "5", "--out", str(tmp_path / "x")]) == 2
    assert "not a positive multiple of the chunk" in capsys.readouterr().err
    assert main(["quality", "--scheme", "fp8", "--clip-model", "c", "--out", str(tmp_path / "x")]) == 2
    assert "give --vae too" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_quality_command_torchao_on_cpu_says_cuda(tmp_path, capsys):
    args = ["quality", "--scheme", "fp8", "--quant-backend", "torchao", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("NOTE: no text encoder")]
    assert len(err) == 1 and "CUDA" in err[0] and "backend='emulate'" in err[0]
    assert not (tmp_path / "r").exists()


def test_quality_encodes_the_prompts_with_the_models_text_encoder(tmp_path, capsys, monkeypatch):
    from test_checkpoint_formats import _tiny_parts, _write_diffusers_model_dir

    from arvid.commands.quality import vae_source
    from arvid.runtime.loaders import find_model_files
    from arvid.runtime.text_encoder import TextEncoder

    root = tmp_path / "model"
    _write_diffusers_model_dir(root, *_tiny_parts())
    rep = tmp_path / "rep"
    argv = ["quality", "--model", str(root), "--preset", "tiny", "--scheme", "int8", "--frames", "3",
            "--prompt", "a red fox", "--quiet", "--out", str(rep)]  # fmt: skip
    seen = {}
    real_encode = TextEncoder.encode

    def encode(self, prompts):
        seen.setdefault("prompts", []).append(prompts)
        return real_encode(self, prompts)

    monkeypatch.setattr(TextEncoder, "encode", encode)
    assert main(argv) == 0
    assert seen["prompts"] == ["a red fox"]  # the real prompt went through the model's umT5
    assert "stand-in" not in capsys.readouterr().err  # so no banner
    meta = json.loads((rep / "report.json").read_text())["meta"]
    assert meta["prompt_embeddings"] == f"umT5 text encoder of {root}"
    # --vae is a flag (as in bench): decode with the VAE of --model, else --vae-weights, else tiny's random one
    args = build_parser().parse_args(["quality", "--scheme", "int8", "--vae", "--out", "r"])
    assert vae_source(args, find_model_files(root), get_preset("tiny")) == str(root / "vae")
    assert vae_source(args, None, get_preset("tiny")) == "tiny"
    with pytest.raises(ValueError, match="needs VAE weights: give --model DIR or --vae-weights"):
        vae_source(args, None, get_preset("wan2.1-t2v-1.3b"))
    assert main(["quality", "--scheme", "int8", "--vae-weights", "x", "--out", str(tmp_path / "x")]) == 2
    assert "--vae-weights needs --vae" in capsys.readouterr().err
