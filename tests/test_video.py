"""mp4 output: frame count and size read back with PyAV, no broken files on errors or Ctrl-C, CLI video."""

import av
import pytest
import torch

from arvid.cli import main
from arvid.runtime.video import VideoWriter, pick_codec, read_video_info, write_png_frames


def _frames(t, h=48, w=64, seed=0):
    return torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_writes_frames_in_chunks(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, width=64, height=48) as w:
        w.write(_frames(9))
        assert not out.exists()  # only the temporary file until closed
        w.write(_frames(12, seed=1))
    assert read_video_info(out) == (21, 64, 48, 16.0)
    assert list(tmp_path.iterdir()) == [out]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_error_leaves_no_file(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError), VideoWriter(out, width=64, height=48) as w:
        w.write(_frames(3))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_finalises_what_was_written(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(KeyboardInterrupt), VideoWriter(out, width=64, height=48) as w:
        w.write(_frames(5))
        raise KeyboardInterrupt
    assert w.interrupted and w.frames_written == 5
    assert read_video_info(out)[:3] == (5, 64, 48)  # playable, exactly the frames written
    assert list(tmp_path.iterdir()) == [out]
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "empty.mp4", width=64, height=48):
        raise KeyboardInterrupt  # nothing written: no file
    assert list(tmp_path.iterdir()) == [out]


def test_bad_sizes_and_frames(tmp_path):
    with pytest.raises(ValueError, match="must be positive and even"):
        VideoWriter(tmp_path / "v.mp4", width=63, height=48)
    with pytest.raises(ValueError, match=r"must be \.mp4"):
        VideoWriter(tmp_path / "v.avi", width=64, height=48)
    with (
        pytest.raises(ValueError, match=r"frames must be \[T, 48, 64, 3\]"),
        VideoWriter(tmp_path / "v.mp4", width=64, height=48) as w,
    ):
        w.write(_frames(2, h=32))
    assert list(tmp_path.iterdir()) == []


def test_codec_fallback_without_libx264(monkeypatch, capsys):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    name = pick_codec()
    assert name != "libx264" and "libx264 is not in this PyAV build" in capsys.readouterr().err
    with pytest.raises(ValueError, match="codec 'nope' is not available"):
        pick_codec("nope")


def test_png_frames(tmp_path):
    from PIL import Image

    write_png_frames(_frames(2), tmp_path / "png", start=7)
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["frame_000007.png", "frame_000008.png"]
    assert Image.open(tmp_path / "png" / names[0]).size == (64, 48)


@pytest.mark.slow
def test_cli_generate_tiny_mp4_with_no_files(tmp_path):
    """`arvid generate --preset tiny --out video.mp4` on a fresh machine: random DiT, tiny umT5, tiny VAE."""
    out = tmp_path / "video.mp4"
    args = ["generate", "--preset", "tiny", "--frames", "6", "--prompt", "a", "--prompt", "b", "--switch-frames", "3"]
    lat = tmp_path / "l.safetensors"
    assert main([*args, "--out", str(out), "--latents", str(lat), "--png-dir", str(tmp_path / "png"), "--quiet"]) == 0
    assert read_video_info(out) == (21, 64, 64, 16.0)  # 6 latent frames -> 1 + 4 * 5
    assert len(list((tmp_path / "png").iterdir())) == 21
    from safetensors.torch import load_file

    assert load_file(str(lat))["latents"].shape == (1, 6, 16, 8, 8)


def test_cli_seconds_and_bad_out(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--seconds", "0.5", "--out", str(out), "--quiet"]) == 0
    assert read_video_info(out)[0] == 9  # 8 frames wanted -> 3 latent frames (one chunk) -> 9
    assert main(["generate", "--out", str(tmp_path / "v.gif")]) == 2
    assert "use .mp4 for video or .safetensors for latents" in capsys.readouterr().err
    assert main(["generate", "--preset", "wan2.1-t2v-1.3b", "--out", str(tmp_path / "w.mp4")]) == 2
    assert "video output needs VAE weights" in capsys.readouterr().err


def test_cli_ctrl_c_keeps_a_playable_prefix(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second chunk: the mp4 holds the first chunk's 9 frames, finalised, and says so."""
    from arvid.runtime.vae import StreamingVAEDecoder

    real = StreamingVAEDecoder.decode

    def decode(self, latents):
        if self.latent_frames >= 3:
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(StreamingVAEDecoder, "decode", decode)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--frames", "6", "--out", str(out), "--latents", str(tmp_path / "l.safetensors")]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: {out} holds the first 9 video frames" in err
    assert read_video_info(out)[:3] == (9, 64, 64)
    # no temp file; both chunks' latents were done before the interrupt, so --latents holds them all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors", "v.mp4"]
    assert f"{tmp_path / 'l.safetensors'} holds all 6 latent frames" in err
