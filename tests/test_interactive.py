"""Interactive prompts: LongLive JSONL schedules, live prompt changes at chunk boundaries, the CLI."""

import io
import json

import pytest
import torch

from arvid.cli import main
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
from arvid.runtime.interactive import LivePromptReader
from arvid.runtime.prompts import align_switch_frames, read_prompt_jsonl
from arvid.runtime.vae import latent_frames_for_seconds

TINY = get_preset("tiny")


# -- JSONL ----------------------------------------------------------------------------------------
def test_jsonl_parse(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompts": ["a", "b", "c"]}\n\n{"prompts": ["d", "e", "f"], "extra": 1}\n')
    assert read_prompt_jsonl(f, num_switches=2) == [["a", "b", "c"], ["d", "e", "f"]]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompts": ["a", "b"]}\n{"prompts": ["a", "b"\n', r"p\.jsonl:2: malformed JSON"),
        ('{"prompts": ["a", "b"]}\n\n{"prompt": ["a", "b"]}\n', r"p\.jsonl:3: missing key 'prompts'"),
        ('{"prompts": ["a", "b", "c"]}\n', r"p\.jsonl:1: 3 prompts, but 1 switch frames need 2"),
        ('{"prompts": ["a", ""]}\n', r"p\.jsonl:1: 'prompts' must be a non-empty list of non-empty strings"),
        ("\n\n", r"p\.jsonl: no prompts"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, text, message):
    f = tmp_path / "p.jsonl"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompt_jsonl(f, num_switches=1)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(ValueError, match=r"prompt file .*nope\.jsonl does not exist"):
        read_prompt_jsonl(tmp_path / "nope.jsonl")


def test_switch_alignment_follows_longlive():
    # LongLive switches at the first chunk that starts at or after the switch frame.
    assert align_switch_frames([40, 80, 120], 3, 240) == [42, 81, 120]
    assert align_switch_frames([48, 96], 6, 144) == [48, 96]
    with pytest.raises(ValueError, match="same chunk boundary"):
        align_switch_frames([40, 41], 3, 240)
    with pytest.raises(ValueError, match="not before the end of the video"):
        align_switch_frames([239], 3, 240)


def test_seconds_to_latent_frames():
    assert latent_frames_for_seconds(30, 16, 3) == 123  # 480 frames need 121 latent frames; whole chunks: 123
    assert latent_frames_for_seconds(0.5, 16, 3) == 3


# -- live prompt changes ----------------------------------------------------------------------------
FRAMES = 18


@pytest.fixture(scope="module")
def setup():
    model = build_model(TINY.model, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, FRAMES, 16, 8, 8, generator=g)
    renoise = torch.randn(FRAMES // 3, 3, 1, 3, 16, 8, 8, generator=g)
    prompts = {k: torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g) for k in "abc"}
    return model, noise, renoise, prompts


def _fixed(setup, names, switches, stream=None):
    model, noise, renoise, prompts = setup
    gen = StreamingGenerator(model, stream, latent_size=(8, 8), backend="sdpa")
    return gen.generate(noise, [prompts[n] for n in names], switches, renoise=renoise)


@pytest.mark.slow
@pytest.mark.parametrize("global_sink", [True, False])
def test_prompt_source_equals_fixed_schedule(setup, global_sink):
    """A live prompt at frames 6 and 15 (> attention window) gives the scheduled switch's latents."""
    model, noise, renoise, prompts = setup
    stream = StreamConfig(global_sink=global_sink)
    want = _fixed(setup, "abc", [6, 15], stream)
    asked = []

    def source(frame):
        asked.append(frame)
        return {6: prompts["b"], 15: prompts["c"]}.get(frame)

    gen = StreamingGenerator(model, stream, latent_size=(8, 8), backend="sdpa")
    chunks = list(gen.stream(noise, prompts["a"], prompt_source=source, renoise=renoise))
    assert asked == [3, 6, 9, 12, 15]  # every chunk boundary after the first
    assert [c.recached for c in chunks] == [False, False, True, False, False, True]
    assert torch.equal(torch.cat([c.latents for c in chunks], dim=1), want)


def test_without_source_it_is_the_streaming_generator(setup):
    model, noise, renoise, prompts = setup
    gen = StreamingGenerator(model, latent_size=(8, 8), backend="sdpa")
    got = torch.cat([c.latents for c in gen.stream(noise, [prompts["a"], prompts["b"]], [9], renoise=renoise)], 1)
    assert torch.equal(got, _fixed(setup, "ab", [9]))
    with pytest.raises(ValueError, match="no switch_frames"):
        list(gen.stream(noise, prompts["a"], [9], prompt_source=lambda f: None))


def test_line_typed_mid_stream_switches_at_next_chunk(setup):
    """A prompt queued while chunk 1 is being consumed takes effect at the next boundary (frame 6)."""
    model, noise, renoise, prompts = setup
    reader = LivePromptReader(lambda text: prompts[text], lines=io.StringIO(""))
    gen = StreamingGenerator(model, latent_size=(8, 8), backend="sdpa")
    out = []
    for c in gen.stream(noise, prompts["a"], prompt_source=reader, renoise=renoise):
        out.append(c.latents)
        if c.index == 1:
            reader.put("b")
    assert reader.switches == [(6, "b")]
    assert torch.equal(torch.cat(out, dim=1), _fixed(setup, "ab", [6]))


def test_reader_thread_reads_lines(setup):
    model, noise, renoise, prompts = setup
    reader = LivePromptReader(lambda text: prompts[text], lines=io.StringIO("b\n\n  \nc\n")).start()
    assert reader.closed.wait(5)
    gen = StreamingGenerator(model, latent_size=(8, 8), backend="sdpa")
    got = torch.cat([c.latents for c in gen.stream(noise, prompts["a"], prompt_source=reader, renoise=renoise)], 1)
    assert reader.switches == [(3, "b"), (6, "c")]  # one queued prompt per boundary, in order
    assert torch.equal(got, _fixed(setup, "abc", [3, 6]))


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_interactive_jsonl(tmp_path, capsys):
    from arvid.runtime.video import read_video_info

    f = tmp_path / "example.jsonl"
    f.write_text(json.dumps({"prompts": ["a fox", "a dog"]}) + "\n" + json.dumps({"prompts": ["x", "y"]}) + "\n")
    args = ["interactive", "--prompts", str(f), "--switch-frames", "2", "--frames", "6", "--quiet"]
    assert main([*args, "--out-dir", str(tmp_path / "videos")]) == 0
    assert "switch frame 2 -> 3 (chunk boundary)" in capsys.readouterr().err
    for name in ("0000.mp4", "0001.mp4"):
        assert read_video_info(tmp_path / "videos" / name)[:3] == (21, 64, 64)


def test_cli_interactive_bad_jsonl(tmp_path, capsys):
    f = tmp_path / "example.jsonl"
    f.write_text(json.dumps({"prompts": ["a", "b", "c"]}) + "\n")
    assert main(["interactive", "--prompts", str(f), "--switch-frames", "3", "--out-dir", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "example.jsonl:1: 3 prompts, but 1 switch frames need 2" in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()


def test_cli_live(tmp_path, monkeypatch, capsys):
    from arvid.runtime.video import read_video_info

    monkeypatch.setattr("sys.stdin", io.StringIO("a red fox\na blue bird\n"))
    out = tmp_path / "live.mp4"
    assert main(["interactive", "--live", "--frames", "6", "--out", str(out), "--quiet"]) == 0
    assert read_video_info(out)[:3] == (21, 64, 64)
    err = capsys.readouterr().err
    assert "type the first prompt" in err


def test_cli_download_mocked(tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake(repo_id, local_dir):
        calls.append(repo_id)
        return local_dir

    monkeypatch.setattr(hub, "snapshot_download", fake)
    assert main(["download", "--dir", str(tmp_path)]) == 0
    assert calls == ["Wan-AI/Wan2.1-T2V-1.3B", "Efficient-Large-Model/LongLive-1.3B"]
    assert "--longlive-ckpt" in capsys.readouterr().err

    def offline(repo_id, local_dir):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    assert main(["download", "--only", "wan", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not download Wan-AI/Wan2.1-T2V-1.3B: OSError: network is unreachable" in err
