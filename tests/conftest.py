"""Test setup: Triton kernels run under the interpreter where there is no CUDA; `gpu` tests skip.

Shared by the test modules (``from conftest import ...``): :func:`mismatch_report` / :func:`assert_close`,
the one readable report of where two tensors differ, and the ``one_thread`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
from importlib import metadata
from pathlib import Path

import pytest
import torch

# Must happen before any arvid.kernels module is imported: triton.jit reads it at decoration.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the tests marked long: the 1.3B exports (~30 min, ~12 GB RAM), every kernel config compiled",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line(
        "markers", "long: over 5 minutes on 2 cores (the 1.3B model, every kernel compiled); runs only with --long"
    )
    config.addinivalue_line(
        "markers", "slow: over 10 s on a 2-core CPU machine (a label: -m 'not gpu' runs them, -m 'not slow' skips them)"
    )


CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
# the packages whose releases most often change results, named first in the header
KEY_PACKAGES = (
    "triton", "transformers", "kernels", "diffusers", "onnx", "onnxruntime", "onnxscript", "onnx-ir",
    "nvidia-modelopt", "torchao", "numpy", "ml-dtypes", "protobuf",
)  # fmt: skip


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def constraint_pins() -> dict[str, str]:
    """constraints.txt as ``{normalised name: version}`` (lower case, ``-`` for ``_``)."""
    text = CONSTRAINTS.read_text(encoding="utf-8")
    return {n.lower().replace("_", "-"): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def version_lines() -> list[str]:
    """The exact versions this run tests: the key packages, and every pin of constraints.txt that differs."""
    key = ", ".join(f"{n} {_installed(n) or '-'}" for n in KEY_PACKAGES)
    lines = [f"versions: python {platform.python_version()}, torch {torch.__version__}, {key}"]
    pins = constraint_pins()
    differ = [f"{n} {_installed(n) or 'missing'} (pinned {v})" for n, v in pins.items() if _installed(n) != v]
    if differ:
        lines.append(f"constraints.txt: {len(differ)} of {len(pins)} pins differ: " + ", ".join(differ))
    else:
        lines.append(f"constraints.txt: all {len(pins)} pins installed as pinned (the tested set)")
    return lines


def pytest_sessionstart(session):
    # written here rather than as a report header, which ``-q`` (README's test command) hides
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in version_lines():
            reporter.write_line(line)


_PACKAGES_FROM: set[str] = set()  # node ids of the tests whose setup starts the background package compile


@pytest.hookimpl(trylast=True)  # after -m / -k deselected what will not run
def pytest_collection_modifyitems(config, items):
    import _aoti  # the session's AOTInductor packages and native build (tests/_aoti.py)

    _aoti._memo["native_wanted"] = any(item.path.name == "test_native_stream.py" for item in items)
    # The AOTInductor packages compile in the background from the first test that runs after the last
    # bench test (those measure time, so they run on idle cores); see _aoti.start_packages.
    _PACKAGES_FROM.clear()
    if any(item.path.name in ("test_export_aoti.py", "test_native_stream.py") for item in items):
        last_bench = max((i for i, item in enumerate(items) if item.path.name.startswith("test_bench")), default=-1)
        _PACKAGES_FROM.update(item.nodeid for item in items[last_bench + 1 :])
    if not config.getoption("--long"):
        skip_long = pytest.mark.skip(reason="over 5 minutes: run with --long")
        for item in items:
            if "long" in item.keywords:
                item.add_marker(skip_long)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session):
    import _aoti

    for key in ("packages_proc", "build"):  # background work a stopped session no longer waits for
        proc = _aoti._memo.get(key, (None, None))[-2]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: cmake's and g++'s children too
            proc.wait()


def pytest_runtest_setup(item):  # a skipped test never gets here: the next one starts it
    if item.nodeid in _PACKAGES_FROM:
        import _aoti

        _aoti.start_packages(item.config._tmp_path_factory)


@contextlib.contextmanager
def one_cpu_thread():
    """Torch on one CPU thread inside the block (restored after): what ``one_thread`` does for a test,
    for a session fixture's work (which runs before any function-scoped fixture)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Run a test on one CPU thread: the tiny model is all per-op overhead, and one thread is several
    times faster than two competing ones. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.

    Two threads compete with the session's background work (the AOTInductor package compile, the native
    build, see tests/_aoti.py) and with each other: measured on 2 cores under load, a 36-frame tiny
    stream took 28 s on two threads and 0.7 s on one (test_chunk_step)."""
    with one_cpu_thread():
        yield


def mismatch_report(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    name: str = "tensor",
    dims: str = "blhd",
) -> str:
    """Empty string when ``|actual - expected| <= atol + rtol * |expected|`` everywhere (NaN never passes).

    Otherwise: shape, count of mismatching elements, the worst error with its index named by
    ``dims`` (e.g. ``b=0, l=17, h=2, d=5``), the value pair there, and the first few other offenders.
    """
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN in either compares False, so it counts as bad
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ""
    # NaN ranks worst; the report still prints the raw (NaN) error.
    rank = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    worst = int(torch.argmax(torch.where(bad, rank, torch.zeros_like(rank))))
    labels = dims if len(dims) == a.dim() else "".join(f"i{k}" for k in range(a.dim()))

    def where(flat: int) -> str:
        idx = torch.unravel_index(torch.tensor(flat), a.shape)
        return ", ".join(f"{lab}={int(i)}" for lab, i in zip(labels, idx, strict=True))

    lines = [
        f"{name}: {n_bad} of {a.numel()} elements differ (atol={atol:g}, rtol={rtol:g}), shape {tuple(a.shape)}",
        f"  worst |err|={float(err.flatten()[worst]):.4g} at ({where(worst)}): "
        f"actual={float(a.flatten()[worst]):.6g} expected={float(e.flatten()[worst]):.6g}",
    ]
    for flat in bad.flatten().nonzero().flatten()[:5].tolist():
        lines.append(
            f"  e.g. ({where(flat)}): actual={float(a.flatten()[flat]):.6g} expected={float(e.flatten()[flat]):.6g}"
        )
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, dims: str = "bfchw"):
    """``torch.allclose(actual, expected, atol, rtol)``, failing with :func:`mismatch_report`'s account
    (``dims`` names the axes: latents are ``[b, frame, c, h, w]``)."""
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), mismatch_report(
        actual, expected, atol=atol, rtol=rtol, dims=dims
    )
