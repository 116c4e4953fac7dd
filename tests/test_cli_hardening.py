"""Hardening of `arvid generate` / `arvid interactive` (issue #14, CLI half; #15 item 9 outputs).

Every test runs the CLI in this process (``arvid.cli.main``) on the tiny preset in ``tmp_path``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from arvid.cli import main
from arvid.runtime.video import VideoWriter, read_video_info


def _stray(folder: Path) -> list[Path]:
    """Temporary files an interrupted writer might leave (``.name.<pid>.tmp...``)."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any weights load: validation must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the DiT was loaded before the arguments were validated")

    monkeypatch.setattr("arvid.runtime.loaders.load_dit", refuse)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising ``KeyboardInterrupt``, as Python sets it up under a terminal. A job started in the
    background of a non-interactive shell (``cmd &`` in a script) inherits SIGINT ignored, and Python
    keeps it so: there the test's own ``os.kill(SIGINT)`` would be ignored, not the product at fault."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# -- 1. SIGTERM / SIGINT keep a playable prefix -------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.usefixtures("ctrl_c_raises")
def test_signal_mid_stream_keeps_playable_prefix(tmp_path, monkeypatch, capsys, sig, code):
    write = VideoWriter.write
    calls = []

    def write_then_signal(self, frames):
        write(self, frames)
        calls.append(frames.shape[0])
        if len(calls) == 2:  # after the second chunk is written, as `timeout` / Ctrl-C would
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(VideoWriter, "write", write_then_signal)
    out, lat = tmp_path / "v.mp4", tmp_path / "l.safetensors"
    args = ["generate", "--frames", "12", "--quiet", "--out", str(out), "--latents", str(lat)]
    assert main(args) == code
    err = capsys.readouterr().err
    frames, width, height, _ = read_video_info(out)  # decodes every frame: a playable file
    assert frames == sum(calls) == 9 + 12  # the first chunk decodes to 9 frames, the next to 12
    assert (width, height) == (64, 64)
    assert f"{out} holds the first 21 video frames (2 of 4 chunks" in err
    with safe_open(str(lat), "pt") as f:
        assert f.get_tensor("latents").shape[1] == 6
        assert f.metadata()["complete"] == "false" and f.metadata()["frames_requested"] == "12"
    assert f"{lat} holds the first 6 of 12 latent frames" in err
    assert _stray(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_sigterm_before_any_frame_leaves_nothing(tmp_path, monkeypatch, capsys):
    def signal_first(self, frames):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(VideoWriter, "write", signal_first)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--frames", "6", "--quiet", "--out", str(out)]) == 143
    assert "no video frame was finished" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_with_latents_only_writes_the_latents_prefix(tmp_path, monkeypatch, capsys):
    from arvid.runtime.generator import StreamingGenerator

    stream = StreamingGenerator.stream

    def stream_then_signal(self, *args, **kwargs):
        for c in stream(self, *args, **kwargs):
            yield c
            if c.index == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(StreamingGenerator, "stream", stream_then_signal)
    out = tmp_path / "l.safetensors"
    assert main(["generate", "--frames", "12", "--quiet", "--out", str(out)]) == 143
    assert f"{out} holds the first 6 of 12 latent frames" in capsys.readouterr().err
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("latents").shape[1] == 6 and f.metadata()["complete"] == "false"
    assert _stray(tmp_path) == []


def test_sigterm_in_interactive_keeps_finished_videos_and_the_manifest(tmp_path, monkeypatch, capsys):
    write = VideoWriter.write
    calls = []

    def write_then_signal(self, frames):
        write(self, frames)
        calls.append(self.path.name)
        if calls == ["0000.mp4", "0000.mp4", "0001.mp4"]:  # the second video's first chunk
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(VideoWriter, "write", write_then_signal)
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompts": ["a fox"]}) + "\n" + json.dumps({"prompts": ["a dog"]}) + "\n")
    videos = tmp_path / "videos"
    assert main(["interactive", "--prompts", str(f), "--frames", "6", "--quiet", "--out-dir", str(videos)]) == 143
    assert f"{videos / '0001.mp4'} holds the first 9 video frames (1 of 2 chunks in full)" in capsys.readouterr().err
    assert read_video_info(videos / "0000.mp4")[0] == 21 and read_video_info(videos / "0001.mp4")[0] == 9
    manifest = json.loads((videos / "prompts.json").read_text())
    assert manifest["0000.mp4"]["complete"] is True and manifest["0001.mp4"]["complete"] is False
    assert _stray(tmp_path) == []


def test_signals_deferred_holds_sigterm_until_the_block_ends():
    from arvid.runtime.files import Terminated, signals_deferred, sigterm_as_interrupt

    done = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("finalised")  # still runs: the signal waits
        done.append("after")  # not reached: delivered when the block ends
    assert done == ["finalised"]


# -- 2. everything checked before any weights load ----------------------------------------------------
GEN = ["generate", "--frames", "24", "--quiet"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--switch-frames", "12,6", "--prompt", "a", "--prompt", "b", "--prompt", "c"], "not sorted: 6 after 12"),
        (["--switch-frames", "6,6", "--prompt", "a", "--prompt", "b", "--prompt", "c"], "duplicate switch frame 6"),
        (["--switch-frames", "24", "--prompt", "a", "--prompt", "b"], "out of range"),
        (["--switch-frames", "4,5", "--prompt", "a", "--prompt", "b", "--prompt", "c"], "same chunk boundary"),
        (["--switch-frames", "22", "--prompt", "a", "--prompt", "b"], "not before the end of the video"),
        (["--backend", "nope"], "unknown attention backend or engine 'nope'"),
        (["--backend", "sdpa+turbo"], "unknown option(s) ['turbo']"),
        (["--backend", "sdpa+graphs", "--device", "cpu"], "CUDA graphs need a CUDA device"),
        (["--codec", "aac"], "--codec: codec 'aac' is an audio encoder, not a video encoder"),
        (["--codec", "no-such-codec"], "--codec: codec 'no-such-codec' is not available"),
    ],
)
def test_bad_schedule_and_codec_fail_before_load(tmp_path, no_load, capsys, extra, message):
    assert main([*GEN, *extra, "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", ["nan", "inf", "0", "-1"])
def test_bad_seconds_fail_before_load(tmp_path, no_load, capsys, seconds):
    assert main(["generate", "--seconds", seconds, "--out", str(tmp_path / "v.mp4")]) == 2
    assert f"--seconds must be a finite number > 0, got {float(seconds)}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, message",
    [("--fps", "0", "argument --fps: must be > 0"), ("--seed", str(2**64), "argument --seed: must fit a 64-bit")],
)
def test_bad_fps_and_seed_are_argument_errors(tmp_path, no_load, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["generate", flag, value, "--out", str(tmp_path / "v.mp4")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_output_destinations_are_checked_before_load(tmp_path, no_load, capsys, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (["--out", str(tmp_path / "adir.mp4")], "is a directory"),
        (["--out", str(a_file / "v.mp4")], f"{a_file} is not a directory"),
        (["--out", str(tmp_path / "v.mp4"), "--png-dir", str(a_file)], "is a file, not a directory"),
        (["--out", str(tmp_path / "v.mp4"), "--latents", str(a_file / "l.safetensors")], "is not a directory"),
    ]
    (tmp_path / "adir.mp4").mkdir()
    for extra, message in cases:
        assert main(["generate", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    # an unwritable folder (creating a file there is faked to fail: the tests may run as root, whom
    # permissions do not stop)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(locked / ".probe"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert main(["generate", "--out", str(tmp_path / "v.mp4"), "--latents", str(locked / "l.safetensors")]) == 2
    assert f"--latents {locked / 'l.safetensors'}: cannot write in {locked}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "adir.mp4", "file.txt", "locked"]


def test_interactive_checks_before_load(tmp_path, no_load, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompts": ["a"]}\n{"prompts": ["caf\xe9"]}\n')
    assert main(["interactive", "--prompts", str(bad), "--out-dir", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not UTF-8 text (byte 0xe9" in err and "Traceback" not in err
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompts": ["a", "b", "c"]}) + "\n")
    args = ["interactive", "--prompts", str(good), "--frames", "12", "--out-dir", str(tmp_path / "v")]
    assert main([*args, "--switch-frames", "9,3"]) == 2
    assert "switch frames not sorted: 3 after 9" in capsys.readouterr().err
    assert main([*args, "--switch-frames", "3,6", "--out-dir", str(bad)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["interactive", "--live", "--seconds", "0", "--out", str(tmp_path / "l.mp4")]) == 2
    assert "--seconds must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


# -- 3. one switch-frame rule -------------------------------------------------------------------------
def test_generate_moves_a_switch_to_the_next_chunk_and_says_so(tmp_path, capsys):
    outs = []
    for s in ("13", "15"):
        out = tmp_path / f"s{s}.safetensors"
        args = ["generate", "--frames", "24", "--prompt", "a", "--prompt", "b", "--switch-frames", s]
        assert main([*args, "--quiet", "--out", str(out)]) == 0
        with safe_open(str(out), "pt") as f:
            outs.append(f.get_tensor("latents"))
            assert f.metadata()["switch_frames"] == "15"
        if s == "13":
            assert "switch frame 13 -> 15 (chunk boundary)" in capsys.readouterr().err
    assert torch.equal(outs[0], outs[1])  # LongLive's rule: 13 takes effect at the chunk starting at 15


# -- 4. no traceback for bad files / closed stdin; one error handler ----------------------------------
def test_live_with_stdin_closed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", None)  # what Python sets when the process starts with stdin closed
    out = tmp_path / "live.mp4"
    assert main(["interactive", "--live", "--frames", "6", "--out", str(out), "--quiet"]) == 2
    assert "standard input is closed" in capsys.readouterr().err and not out.exists()
    assert main(["interactive", "--live", "--prompt", "a fox", "--frames", "6", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no live switches" in err and "Traceback" not in err and "Exception in thread" not in err
    assert read_video_info(out)[0] == 21


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def boom(seconds):
        raise RuntimeError("a bug")

    monkeypatch.setattr("arvid.commands.generate.check_seconds", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["generate", "--out", str(tmp_path / "v.mp4")])


# -- 5. small things ----------------------------------------------------------------------------------
def test_latents_honour_the_umask_and_the_bar_counts_latent_frames(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "v.mp4"
        assert main(["generate", "--frames", "6", "--out", str(out), "--latents", str(tmp_path / "l.safetensors")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "l.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    err = capsys.readouterr().err
    assert "latent frames: 100%" in err and "6/6" in err and "video frames" not in err


def test_live_prompt_echo_is_truncated(tmp_path, monkeypatch, capsys):
    long_prompt = "a very long prompt " * 500
    monkeypatch.setattr("sys.stdin", io.StringIO("a red fox\n" + long_prompt + "\n"))
    out = tmp_path / "live.mp4"
    assert main(["interactive", "--live", "--frames", "6", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    text = long_prompt.strip()
    assert f"switched at latent frame 3: {text[:80]}... ({len(text)} chars)" in err
    assert text not in err


# -- 6. interactive outputs: PNGs per video, prompts.json, mp4 metadata --------------------------------
def test_interactive_png_subfolders_manifest_and_metadata(tmp_path, capsys):
    import av

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompts": ["a fox", "a dog"]}) + "\n" + json.dumps({"prompts": ["x", "y"]}) + "\n")
    videos, pngs = tmp_path / "videos", tmp_path / "png"
    args = ["interactive", "--prompts", str(f), "--switch-frames", "2", "--frames", "6", "--seed", "7", "--quiet"]
    assert main([*args, "--out-dir", str(videos), "--png-dir", str(pngs)]) == 0
    assert "switch frame 2 -> 3 (chunk boundary)" in capsys.readouterr().err
    assert sorted(p.name for p in pngs.iterdir()) == ["0000", "0001"]
    for sub in ("0000", "0001"):
        assert len(list((pngs / sub).glob("frame_*.png"))) == 21  # as many as the video's frames
    manifest = json.loads((videos / "prompts.json").read_text())
    assert sorted(manifest) == ["0000.mp4", "0001.mp4"]
    assert manifest["0001.mp4"]["prompts"] == ["x", "y"]
    assert manifest["0001.mp4"]["switch_frames"] == [3] and manifest["0001.mp4"]["switch_frames_requested"] == [2]
    assert manifest["0000.mp4"]["seed"] == 7 and manifest["0000.mp4"]["complete"] is True
    with av.open(str(videos / "0000.mp4")) as c:
        meta = dict(c.metadata)
    assert json.loads(meta["prompt"]) == ["a fox", "a dog"]
    assert meta["seed"] == "7" and meta["backend"] and meta["arvid_version"]
    assert _stray(tmp_path) == []


# -- found in review after the merge ------------------------------------------------------------------
def test_a_folder_named_like_the_preset_is_not_read_as_a_model(tmp_path, monkeypatch):
    """Without --model the preset is a preset, even where a folder of that name sits in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert main(["generate", "--frames", "3", "--quiet", "--out", str(tmp_path / "x.safetensors")]) == 0
    assert (tmp_path / "x.safetensors").is_file()


def test_an_abbreviated_config_flag_is_refused_not_ignored(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("frames: 6\nseed: 5\n")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--conf", str(cfg), "--out", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2 and "--conf" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("backend", ["ort", "sdpa+graphs"])
def test_sequence_parallel_with_engines_or_graphs_fails_before_load(tmp_path, capsys, no_load, backend):
    argv = ["generate", "--sequence-parallel", "2", "--backend", backend, "--out", str(tmp_path / "x.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no engines, no CUDA graphs" in err or "CUDA graphs need a CUDA device" in err, err
