"""Every file error is one line naming the path and the reason, checked before the work (issue #25, item 1).

Unit tests of the errno mapping (no mounts needed), then the CLI on a read-only bind mount and on a
full tmpfs where this machine lets the test mount them (skipped, with the reason, where not).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from arvid.cli import main, user_error_line
from arvid.runtime import files
from arvid.runtime.files import atomic_write, describe_os_error, path_error, read_text


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- the mapping ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, reason",
    [
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left on device"),
        (errno.ENOTDIR, "not a directory"),
        (errno.ENOENT, "not found"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_path_error_names_the_path_and_the_reason(code, reason):
    raw = OSError(code, os.strerror(code))  # a write() on a full disk names no file
    e = path_error(raw, "out/r.json", "cannot write")
    assert e.errno == code and e.filename == "out/r.json"
    assert type(e) is type(OSError(code, "x"))  # the errno's subclass: FileNotFoundError, PermissionError, ...
    line = describe_os_error(e)
    assert line.startswith("out/r.json: cannot write (") and reason in line
    assert user_error_line(e) == line
    # a raw OSError with its own file name is described the same way
    assert describe_os_error(OSError(code, os.strerror(code), "x/y")).startswith(f"x/y: {reason}")


def test_os_errors_of_no_file_keep_their_traceback():
    assert user_error_line(ConnectionResetError(errno.ECONNRESET, "reset")) is None
    assert user_error_line(RuntimeError("bug")) is None
    assert user_error_line(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert user_error_line(FileNotFoundError("--config x: no such file")) == "--config x: no such file"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.ENOTDIR])
def test_atomic_write_failure_names_the_path_keeps_the_old_file_and_leaves_nothing(tmp_path, code):
    out = tmp_path / "r.json"
    out.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError) as info:
        atomic_write(out, write)
    assert info.value.errno == code and info.value.filename == str(out)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_read_text_names_the_file_and_line_of_bad_bytes(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_bytes(b"frames: 9\nprompt: caf\xe9\n")
    with pytest.raises(ValueError, match=rf"^--config {f}:2: not UTF-8 text \(byte 0xe9 at offset 21\)"):
        read_text(f, "--config")
    with pytest.raises(FileNotFoundError) as info:
        read_text(tmp_path / "missing.yaml", "--config")
    assert describe_os_error(info.value) == f"--config {tmp_path / 'missing.yaml'}: cannot read (not found)"


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left")])
def test_cli_output_checks_map_every_errno(tmp_path, monkeypatch, capsys, code, reason):
    """The check before the work tries to create a file: whatever that raises is the one line."""
    import tempfile

    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / ".arvid-probe-x"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "r.json"
    assert main(["roofline", "--preset", "tiny", "--gpu", "h100", "--json", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"arvid roofline: error: --json {out}: cannot write in {tmp_path} (") and reason in line
    assert not out.exists()


def test_unreadable_inputs_are_one_line(tmp_path, capsys):
    bad = tmp_path / "run.json"
    bad.write_bytes(b'{"schema": "\xff"}')
    assert main(["report", str(bad)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"arvid report: error: {bad}:1: not UTF-8 text (byte 0xff at offset 12); save the file as UTF-8"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"frames: 9\n\xfe\n")
    with pytest.raises(SystemExit) as exit_:  # --config is read while the flags are parsed: argparse's exit
        main(["bench", "--config", str(cfg)])
    assert exit_.value.code == 2
    assert f"--config {cfg}:2: not UTF-8 text (byte 0xfe at offset 10)" in _one_line(capsys.readouterr().err)


# -- real mounts: a read-only bind mount, a full tmpfs --------------------------------------------
def _mount(*args: str) -> str | None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


@pytest.fixture
def ro_dir(tmp_path):
    """A folder on a read-only bind mount (skipped where this sandbox cannot mount)."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "old.json").write_text("old")
    err = _mount("--bind", str(d), str(d))
    if err is not None:
        pytest.skip(f"cannot bind-mount here: {err}")
    try:
        err = _mount("-o", "remount,ro,bind", str(d))
        if err is not None:
            pytest.skip(f"cannot remount read-only here: {err}")
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.fixture
def full_dir(tmp_path):
    """A 64 KiB tmpfs filled to the last byte (skipped where this sandbox cannot mount)."""
    d = tmp_path / "full"
    d.mkdir()
    err = _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d))
    if err is not None:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    try:
        with open(d / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 512)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def _refuse_bench(*args, **kwargs):
    raise AssertionError("the benchmark ran before its --json path was checked")


@pytest.mark.parametrize("where, reason", [("ro_dir", "read-only file system"), ("full_dir", "no space left")])
def test_bench_json_is_checked_before_the_benchmark(request, monkeypatch, capsys, where, reason):
    d = request.getfixturevalue(where)
    monkeypatch.setattr("arvid.bench.stream_bench.run_stream_bench", _refuse_bench)
    out = d / "sub" / "r.json"
    assert main(["bench", "--preset", "tiny", "--frames", "9", "--rounds", "1", "--json", str(out), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"arvid bench: error: --json {out}: ") and reason in line


@pytest.mark.parametrize("where, reason", [("ro_dir", "read-only file system"), ("full_dir", "no space left")])
def test_every_output_flag_is_checked_before_the_work(request, monkeypatch, capsys, where, reason):
    d = request.getfixturevalue(where)

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the output was checked")

    monkeypatch.setattr("arvid.runtime.loaders.load_dit", refuse)
    before = sorted(p.name for p in d.iterdir())
    cases = [
        (["generate", "--preset", "tiny", "--out", str(d / "v.mp4")], "--out"),
        (["quantize", "--preset", "tiny", "--scheme", "fp8", "--out", str(d / "q")], "--out"),
        (["quality", "--preset", "tiny", "--scheme", "fp8", "--out", str(d / "qr")], "--out"),
        (["export", "onnx", "--preset", "tiny", "--graph", "step", "--out", str(d / "e")], "--out"),
        (["roofline", "--preset", "tiny", "--gpu", "h100", "--json", str(d / "r.json")], "--json"),
    ]
    for argv, flag in cases:
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert f"error: {flag} {d}/" in line and reason in line, (argv, line)
    assert sorted(p.name for p in d.iterdir()) == before


def test_report_on_a_full_disk_leaves_nothing_behind(full_dir, tmp_path, capsys):
    run = tmp_path / "run.json"
    assert main(["bench", "--preset", "tiny", "--frames", "9", "--rounds", "1", "--quiet", "--json", str(run)]) == 0
    capsys.readouterr()
    for flag, name in [("--html", "x.html"), ("--markdown", "x.md"), ("--plots", "plots")]:
        assert main(["report", str(run), flag, str(full_dir / name)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"{full_dir}/" in line and "no space left" in line, line
    assert sorted(p.name for p in full_dir.iterdir()) == ["filler"]


@pytest.mark.slow  # 20 s on the 2-core test machine (the VAE and the mp4 encoder load)
def test_generate_on_a_disk_that_fills_up_keeps_the_old_video(full_dir, capsys):
    """Space for the check, not for the video: the error names the video, the old file stays whole."""
    old = full_dir / "v.mp4"
    (full_dir / "filler").unlink()
    old.write_bytes(b"old video")
    with open(full_dir / "filler", "wb") as f:  # leave one 4 KiB page free
        f.write(b"x" * (64 * 1024 - 2 * 4096))
    assert main(["generate", "--preset", "tiny", "--frames", "12", "--quiet", "--out", str(old)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"arvid generate: error: {old}: cannot write (no space left on device)"
    assert old.read_bytes() == b"old video"
    assert sorted(p.name for p in full_dir.iterdir()) == ["filler", "v.mp4"]


def test_quantize_into_a_folder_that_fills_up_keeps_the_old_variant(full_dir, tmp_path, capsys):
    q = full_dir / "q"
    (full_dir / "filler").unlink()
    q.mkdir()
    (q / "model.safetensors").write_bytes(b"old")
    (q / "quant_config.json").write_text("{}")
    with open(full_dir / "filler", "wb") as f:
        f.write(b"x" * (64 * 1024 - 4 * 4096))
    assert main(["quantize", "--preset", "tiny", "--scheme", "fp8", "--out", str(q)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"arvid quantize: error: {q}/") and "no space left on device" in line, line
    assert (q / "model.safetensors").read_bytes() == b"old" and (q / "quant_config.json").read_text() == "{}"
    assert sorted(p.name for p in q.iterdir()) == ["model.safetensors", "quant_config.json"]


def test_the_probe_leaves_no_file(tmp_path):
    files.check_writable_dir(tmp_path / "a" / "b", "--out x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # traces and exports the tiny step graph: about 20 s here
def test_onnx_export_on_a_disk_that_fills_up_leaves_no_folder(tmp_path, capsys):
    pytest.importorskip("onnx")
    d = tmp_path / "small"
    d.mkdir()
    err = _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d))
    if err is not None:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    try:
        out = d / "e"
        assert main(["export", "onnx", "--preset", "tiny", "--graph", "step", "--out", str(out)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line == f"arvid export: error: {out}/step.onnx: cannot write (no space left on device)"
        assert list(d.iterdir()) == []
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_download_checks_its_folder_and_names_it_on_a_full_disk(tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(["download", "--dir", str(a_file)]) == 2
    assert _one_line(capsys.readouterr().err) == f"arvid download: error: --dir {a_file}: is a file, not a directory"

    def full(repo_id, local_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hub, "snapshot_download", full)
    assert main(["download", "--only", "wan", "--dir", str(tmp_path)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"arvid download: error: {tmp_path / 'Wan2.1-T2V-1.3B'}: cannot download into (no space left on device)"
    )
