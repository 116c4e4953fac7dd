"""The Python API (arvid.Pipeline) and endless streams (the initial noise drawn chunk by chunk)."""

import io
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from arvid.pipeline import GeneratedVideo, Pipeline
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
SHAPE = (1, 6, TINY.model.in_dim, TINY.latent_height, TINY.latent_width)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def gen():
    model = build_model(TINY.model, seed=0)
    return StreamingGenerator(model, latent_size=(TINY.latent_height, TINY.latent_width), backend="sdpa")


def _prompt(seed=0):
    return torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=torch.Generator().manual_seed(seed))


# -- StreamingGenerator.stream: the noise per chunk -----------------------------------------------
def test_seeded_generator_noise_equals_the_all_at_once_draw(gen):
    """Per-chunk draws from a seeded Generator are the slices of one torch.randn(1, F, ...) draw."""
    prompts, switches = [_prompt(1), _prompt(2)], [3]
    whole = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    want = gen.generate(whole, prompts, switches, generator=torch.Generator().manual_seed(9))
    got = gen.generate(
        torch.Generator().manual_seed(5), prompts, switches, num_frames=6, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(got, want)


def test_callable_noise_gets_chunk_index_and_shape(gen):
    whole = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    calls = []

    def noise(ci, shape):
        calls.append((ci, shape))
        return whole[:, ci * 3 : (ci + 1) * 3]

    want = gen.generate(whole, _prompt(), generator=torch.Generator().manual_seed(1))
    got = gen.generate(noise, _prompt(), num_frames=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    assert calls == [(0, (1, 3, *SHAPE[2:])), (1, (1, 3, *SHAPE[2:]))]


def test_endless_stream_runs_until_the_caller_stops(gen):
    """No frame count: the caller ends it; up to there it is the fixed-length stream, switches included."""
    prompts = [_prompt(1), _prompt(2)]
    stream = gen.stream(torch.Generator().manual_seed(0), prompts, [6], generator=torch.Generator().manual_seed(1))
    chunks = list(itertools.islice(stream, 4))
    stream.close()
    assert [c.frame_start for c in chunks] == [0, 3, 6, 9] and [c.recached for c in chunks] == [0, 0, 1, 0]
    whole = torch.randn(1, 12, *SHAPE[2:], generator=torch.Generator().manual_seed(0))
    want = gen.generate(whole, prompts, [6], generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat([c.latents for c in chunks], dim=1), want)


def test_endless_stream_grows_rope_past_its_table():
    model = build_model(TINY.model.__class__(**{**TINY.model.__dict__, "rope_max_positions": 8}), seed=0)
    g = StreamingGenerator(model, latent_size=(TINY.latent_height, TINY.latent_width), backend="sdpa")
    stream = g.stream(torch.Generator().manual_seed(0), _prompt())
    last = list(itertools.islice(stream, 4))[-1]  # frames 9..11 need 12 > 8 positions
    assert model.rope.positions >= 12 and torch.isfinite(last.latents).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise=lambda ci, shape: torch.zeros(1, 2)), "must return a tensor"),
        (dict(noise=torch.zeros(SHAPE), num_frames=3), "num_frames 3 but the noise tensor has 6"),
        (dict(noise=torch.Generator(), num_frames=4), "not a positive multiple"),
        (dict(noise=torch.Generator(), renoise=torch.zeros(1)), "endless stream takes renoise as a callable"),
    ],
)
def test_bad_noise_is_a_clear_error(gen, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(gen.stream(prompts=_prompt(), **kwargs))


def test_noise_of_the_wrong_type_is_a_type_error(gen):
    with pytest.raises(TypeError, match=r"^noise must be a tensor, a torch.Generator or a callable, got str$"):
        next(gen.stream(noise="x", prompts=_prompt()))


def test_generate_without_frame_count_needs_num_frames(gen):
    with pytest.raises(ValueError, match="needs num_frames"):
        gen.generate(torch.Generator(), _prompt())


# -- Pipeline ---------------------------------------------------------------------------------------
def test_tiny_pipeline_streams_decoded_chunks(pipe):
    chunks = list(pipe.stream(["a cat", "a dog"], switch_frames=[3], num_frames=6, seed=1))
    assert [c.frame_start for c in chunks] == [0, 3] and [c.recached for c in chunks] == [False, True]
    h, w = TINY.video_size
    assert chunks[0].video.shape == (9, 3, h, w) and chunks[1].video.shape == (12, 3, h, w)
    frames = chunks[0].frames
    assert frames.dtype == np.uint8 and frames.shape == (9, h, w, 3)
    assert chunks[0].latents.shape == (1, 3, *SHAPE[2:])


def test_pipeline_is_the_generator_with_seeded_noise(pipe):
    """Pipeline(seed) = StreamingGenerator on torch.randn(1, F, ...) seeded `seed`, re-noise `seed + 1`."""
    out = pipe.generate("a cat", num_frames=6, seed=4, decode=False)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    want = pipe.generator.generate(noise, pipe.encode("a cat"), generator=torch.Generator().manual_seed(5))
    assert torch.equal(out.latents, want)
    assert out.video is None


def test_generate_and_save(pipe, tmp_path):
    from arvid.runtime.video import read_video_info

    out = pipe.generate("a fox", num_frames=6, seed=0)
    assert isinstance(out, GeneratedVideo) and out.video.shape[0] == 21
    out.save(tmp_path / "fox.mp4")
    assert read_video_info(tmp_path / "fox.mp4")[:3] == (21, TINY.video_size[1], TINY.video_size[0])
    out.save(tmp_path / "fox.safetensors")
    with safe_open(str(tmp_path / "fox.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("latents"), out.latents)
        meta = f.metadata()
    assert meta["seed"] == "0" and '"chunk_frames": 3' in meta["stream_config"] and meta["prompts"] == '["a fox"]'
    with pytest.raises(ValueError, match=r"use \.mp4 for video or \.safetensors"):
        out.save(tmp_path / "fox.gif")


def test_pipeline_options(tmp_path):
    stream = StreamConfig(chunk_frames=2, sink_frames=2, attention_frames=6, denoising_steps=(1000, 500))
    p = Pipeline.from_pretrained(
        "tiny", device="cpu", backend="eager", stream_config=stream, need_vae=False, text_encoder_device="offload"
    )
    assert p.vae is None and p.backend_name == "eager" and p.stream_config is stream
    out = p.generate("x", num_frames=4)
    assert out.latents.shape[1] == 4
    with pytest.raises(ValueError, match="no decoded video"):
        out.save(tmp_path / "x.mp4")


def test_pipeline_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="video output needs VAE weights"):
        Pipeline.from_pretrained("wan2.1-t2v-1.3b", device="cpu")
    with pytest.raises(ValueError, match="unknown attention backend or engine"):
        Pipeline.from_pretrained("tiny", device="cpu", backend="nope")


def test_write_stops_an_endless_stream(pipe, tmp_path):
    from arvid.runtime.video import read_video_info

    n = iter(range(100))
    res = pipe.write(tmp_path / "v.mp4", "a cat", num_frames=None, stop=lambda: next(n) >= 2)
    assert res.num_frames == 9 and res.video_frames == 9 + 2 * 12
    assert read_video_info(tmp_path / "v.mp4")[0] == res.video_frames


def test_interactive_live_runs_until_end_of_input(tmp_path, monkeypatch, capsys):
    """No --frames: the live stream ends at EOF, after every typed prompt took effect."""
    from arvid.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat\na dog\n"))
    out = tmp_path / "live.mp4"
    assert main(["interactive", "--live", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "switched at latent frame" in err and "a dog" in err and out.is_file()


def test_import_arvid_stays_light_and_exposes_pipeline():
    code = "import sys, arvid; assert 'torch' not in sys.modules; from arvid import Pipeline; print(Pipeline.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Pipeline"
