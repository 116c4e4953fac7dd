"""Session-wide AOTInductor packages and native build for the export tests.

AOTInductor compiles take tens of seconds each on this CPU, and the native build about a minute,
so both happen once per test session, in the session's temporary folder: packages are reused by
their manifest key (export/aoti.py), the build folder by CMake itself. The native build starts
in the background before the packages compile, so the two overlap.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "native"))

import check_parity  # noqa: E402  (native/check_parity.py: the parity setup ctest runs)

_memo: dict[str, object] = {}


def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


def packages(tmp_path_factory) -> tuple[torch.nn.Module, list[Path]]:
    """The tiny model and its step + re-cache packages (check_parity's setup, so ctest reuses them).

    Where the session also runs the native tests (``_memo["native_wanted"]``, set by conftest at
    collection), the native build starts first: the packages compile on one thread and the build
    takes the other core, where it used to wait for its own fixture, minutes later. Where conftest
    started the compile in the background (:func:`start_packages`), this waits for it and then reuses
    the packages by their manifest key (an export that fails there fails here again, with its error)."""
    if _memo.get("native_wanted"):
        start_native_build(tmp_path_factory)
    if "packages" not in _memo:
        background = _memo.pop("packages_proc", None)
        if background is not None:
            proc, log = background
            proc.wait()
            log.close()
        torch.set_num_threads(1)
        model = check_parity.parity_model()
        dirs = check_parity.parity_packages(model, base(tmp_path_factory) / "aoti-cache")
        _memo["packages"] = (model, dirs)
    return _memo["packages"]


def start_packages(tmp_path_factory) -> None:
    """Compile :func:`packages` in a background process on one thread (once per session).

    The compile is two minutes of one core; most tests before the export tests run on one thread
    (the ``one_thread`` fixture), so the second core does it meanwhile."""
    if "packages" in _memo or "packages_proc" in _memo:
        return
    cache = base(tmp_path_factory) / "aoti-cache"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import torch, check_parity; "
        "torch.set_num_threads(1); check_parity.parity_packages(check_parity.parity_model(), Path(sys.argv[2]))"
    )
    log = open(base(tmp_path_factory) / "aoti-packages.log", "w")  # noqa: SIM115  (closed in packages)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", code, str(ROOT / "native"), str(cache)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _memo["packages_proc"] = (proc, log)


def cmake_missing() -> str | None:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: the native streamer cannot be built here"
    return None


def configure_cmd(build: Path, cache: Path) -> list[str]:
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    return [
        "cmake", "-S", str(ROOT), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DARVID_PYTHON={sys.executable}",
        f"-DARVID_PARITY_PACKAGES={cache}",
    ]  # fmt: skip


def readme_build() -> Path | None:
    """README's own build folder (``build/`` at the root, as README's native section and ``.ci/run`` make it)
    when it was configured for this torch and this environment's Python, else None.

    The tests then build there incrementally (a second after ``.ci/run``'s build: its ctest already made
    the parity packages in ``build/aoti-cache``) instead of building arvid-stream again in a temporary
    folder, 2-3 minutes of both cores. CMake rebuilds whatever changed since; a folder configured for
    another torch or Python is left alone."""
    cache_file = ROOT / "build" / "CMakeCache.txt"
    if not cache_file.is_file():
        return None
    # CMakeCache.txt lines: NAME:TYPE=VALUE
    entries = dict(re.findall(r"^(\w+):\w+=(.*)$", cache_file.read_text(errors="replace"), flags=re.M))
    python = entries.get("ARVID_PYTHON") or entries.get("_Python3_EXECUTABLE", "")  # set, or the one CMake found
    same_torch = entries.get("CMAKE_PREFIX_PATH") == torch.utils.cmake_prefix_path
    same_python = bool(python) and Path(python).parent == Path(sys.executable).parent
    return cache_file.parent if same_torch and same_python else None


def start_native_build(tmp_path_factory) -> None:
    """Configure and start building arvid-stream in the background (once per session): in README's
    ``build/`` where it fits (:func:`readme_build`), else in the session's temporary folder."""
    if "build" in _memo or cmake_missing():
        return
    log = open(base(tmp_path_factory) / "native-build.log", "w")  # noqa: SIM115  (closed in native_build)
    build = readme_build()
    if build is not None:
        cmd = f"cmake --build '{build}' -j 2"
    else:
        build = base(tmp_path_factory) / "native-build"
        cache = base(tmp_path_factory) / "aoti-cache"
        configure = " ".join(f"'{a}'" for a in configure_cmd(build, cache))
        cmd = f"{configure} && cmake --build '{build}' -j 2"
    proc = subprocess.Popen(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _memo["build"] = (build, proc, log)


def native_build(tmp_path_factory) -> Path:
    """The build folder with arvid-stream built (fails the test with the build log if it did not build)."""
    reason = cmake_missing()
    if reason:
        pytest.skip(reason)
    start_native_build(tmp_path_factory)
    build, proc, log = _memo["build"]
    if proc.wait():
        log.close()
        text = Path(log.name).read_text()[-4000:]
        pytest.fail(f"the native build failed:\n{text}")
    log.close()
    return build
