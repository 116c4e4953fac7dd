"""The native streamer `arvid-stream` (native/, CMakeLists.txt): built with CMake against the installed
torch, its ctest suite run (selftest + latents equal to arvid's Python generate() within 1e-5 over
36 frames with prompt switches at 3, 12 and 24, global_sink true and false), and its one-line errors.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from _aoti import ROOT, cmake_missing, native_build, packages, start_native_build

from arvid.runtime import StreamConfig
from arvid.runtime.kv_cache import RingPlanner
from arvid.runtime.scheduler import FlowMatchScheduler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    start_native_build(tmp_path_factory)  # builds while the packages compile
    model, dirs = packages(tmp_path_factory)
    return native_build(tmp_path_factory), model, dirs


def test_ctest_selftest_and_parity(built):
    build, _, _ = built
    res = subprocess.run(
        ["ctest", "--test-dir", str(build), "--output-on-failure", "-V"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    diffs = [float(d) for d in re.findall(r"max \|C\+\+ - Python\| = ([0-9.e+-]+)", res.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5, res.stdout[-3000:]
    assert "all checks passed" in res.stdout


def _python_plans(global_sink: bool, frames: int, switches: list[int]) -> list[str]:
    stream = StreamConfig(global_sink=global_sink)
    cache = RingPlanner(stream, 1)  # the Python planner of every ring cache, 1 token per frame as --print-plan
    lines = []
    for fs in range(0, frames, stream.chunk_frames):
        plans = ([("recache", cache.plan_recache(fs))] if fs in switches else []) + [("chunk", None)]
        for kind, p in plans:
            p = p or cache.plan_chunk(fs)
            lines.append(
                f"{kind} frame_start={p.frame_start} num_frames={p.num_frames} write_start={p.write_start} "
                f"kv_len={p.kv_len} filled_after={p.filled_after} next_slot_after={p.next_slot_after}"
            )
            cache.commit(p)
    return lines


@pytest.mark.parametrize("global_sink", [True, False])
def test_plan_and_schedule_match_python(built, global_sink):
    """The C++ ring plan and schedule are the Python ones, switch by switch (switches at 6, 15, 33)."""
    build, _, _ = built
    switches = [6, 15, 33]
    res = subprocess.run(
        [str(build / "arvid-stream"), "--print-plan", "--frames", "48", "--switch-frames", "6,15,33",
         "--global-sink", str(global_sink).lower()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = res.stdout.strip().splitlines()
    assert lines[1:] == _python_plans(global_sink, 48, switches)
    sched = FlowMatchScheduler(StreamConfig())
    got = [float(x) for x in re.findall(r"(?:t|sigma)=([0-9.e+-]+)", lines[0])]
    want = [v for pair in zip(sched.timesteps, sched.sigmas, strict=True) for v in pair]
    assert torch.tensor(got, dtype=torch.float32).tolist() == torch.tensor(want, dtype=torch.float32).tolist()


def _one_line_error(cmd) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_corrupt_package_and_bad_inputs_one_line(built, tmp_path):
    build, _, dirs = built
    exe = str(build / "arvid-stream")
    inputs = build / "parity" / "inputs.safetensors"  # written by the ctest parity run
    if not inputs.exists():
        pytest.skip("the ctest parity run did not write its inputs")
    bad = tmp_path / "step"
    shutil.copytree(dirs[0], bad)
    (bad / "step_f3.pt2").write_bytes(b"not a zip archive" * 10)
    err = _one_line_error([exe, "--package-dir", str(bad), "--package-dir", str(dirs[1]), "--inputs", str(inputs),
                           "--out", str(tmp_path / "o.safetensors")])  # fmt: skip
    assert "corrupt or not an AOTInductor package" in err and "step_f3.pt2" in err
    assert not (tmp_path / "o.safetensors").exists()
    gone = tmp_path / "no-weights"  # the packages' constants live in the weights file beside them
    shutil.copytree(dirs[0], gone)
    (gone / "weights.safetensors").unlink()
    err = _one_line_error([exe, "--package-dir", str(gone), "--package-dir", str(dirs[1]), "--inputs", str(inputs),
                           "--out", str(tmp_path / "o.safetensors")])  # fmt: skip
    assert "weights.safetensors is missing" in err
    shutil.copy(dirs[0] / "weights.safetensors", gone)
    with open(gone / "weights.safetensors", "r+b") as f:  # an interrupted copy
        f.truncate(100)
    err = _one_line_error([exe, "--package-dir", str(gone), "--package-dir", str(dirs[1]), "--inputs", str(inputs),
                           "--out", str(tmp_path / "o.safetensors")])  # fmt: skip
    assert "weights.safetensors holds 100 bytes, the manifest" in err
    odd = tmp_path / "odd"  # nlohmann's get<int>() would read 3.5 as 3 without a word
    shutil.copytree(dirs[0], odd)
    m = json.loads((odd / "export.json").read_text())
    m["stream_config"]["chunk_frames"] = 3.5
    (odd / "export.json").write_text(json.dumps(m))
    err = _one_line_error([exe, "--package-dir", str(odd), "--inputs", str(inputs), "--out", str(tmp_path / "o")])
    assert "export.json" in err and "expected a whole number, got 3.5" in err
    truncated = tmp_path / "in.safetensors"
    truncated.write_bytes(inputs.read_bytes()[:100])
    err = _one_line_error([exe, *[a for d in dirs for a in ("--package-dir", str(d))], "--inputs", str(truncated),
                           "--out", str(tmp_path / "o.safetensors")])  # fmt: skip
    assert "in.safetensors" in err
    err = _one_line_error([exe, "--package-dir", str(tmp_path / "nowhere"), "--inputs", "x", "--out", "y"])
    assert "export.json" in err


def test_configure_without_torch_says_why(tmp_path):
    reason = cmake_missing()
    if reason:
        pytest.skip(reason)
    res = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DCMAKE_PREFIX_PATH=", "-DTorch_DIR=Torch_DIR-NOTFOUND"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Torch not found, so arvid-stream is not built" in res.stdout
