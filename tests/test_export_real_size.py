"""The exports at the size users run: the 1.3B step with random weights, to ONNX and AOTInductor, loaded back.

Opt-in (`pytest --long tests/test_export_real_size.py`): about half an hour on 2 cores. Each export
runs in its own process, whose peak RSS is read from the kernel (``RUSAGE_CHILDREN`` of a wrapper that
starts only it), so the number is the export's, not the test process's. README's "Export at the real
size" gives what this measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.long

WAN = ["--preset", "wan2.1-t2v-1.3b", "--device", "cpu", "--graph", "step"]
# bytes of the step graph's weights in bf16: step.onnx.data as measured 2026-12-07 (the DiT's 2.84 GB less
# the text embedding and cross-attention K/V projections, which run on the host, not in the step graph)
STEP_WEIGHTS_BF16 = 2_538_059_720
WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _arvid(*args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float, int]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "arvid", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    wall = time.perf_counter() - t0
    peak = int(r.stderr.rsplit("PEAK_RSS ", 1)[1].split()[0]) if "PEAK_RSS " in r.stderr else -1
    print(f"arvid {' '.join(args)}: rc {r.returncode}, {wall:.0f} s, peak RSS {peak / 2**30:.2f} GiB")
    return r, wall, peak


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_onnx_export_of_the_real_model(tmp_path, dtype):
    import onnxruntime as ort

    out = tmp_path / f"step_{dtype}"
    r, wall, peak = _arvid("export", "onnx", *WAN, "--dtype", dtype, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads((out / "export.json").read_text())
    weights = (out / "step.onnx.data").stat().st_size
    assert abs(weights - STEP_WEIGHTS_BF16 * (2 if dtype == "fp32" else 1)) < 0.01 * weights
    assert (out / "step.onnx").stat().st_size < 2**27  # the graph itself is small: the weights are external
    assert "trace" in r.stderr and "write" in r.stderr  # each stage said when it started and how long it took
    check = subprocess.run(
        [sys.executable, "-m", "arvid", "export", "check", str(out / "step.onnx")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    if dtype == "fp32":  # ONNX Runtime's CPU provider has no bf16 Conv: the bf16 graph is for GPU runtimes
        ort.InferenceSession(str(out / "step.onnx"), providers=["CPUExecutionProvider"])
        parity = man["parity"]["step.onnx"]
        if "skipped" in parity:  # ORT would need the weights, the inputs and the attention scores again
            assert "GiB available" in parity["skipped"], parity
        else:
            assert max(parity.values()) < 1e-3 and max(man["graphs"][0]["parity_rel_l2"].values()) < 1e-5
    print(json.dumps({"dtype": dtype, "wall_s": round(wall), "peak_rss": peak, "weights": weights}))
    # issue 26: about 2x the weights. Measured once the trace ran on placeholders: bf16 1.37x (3.49 GB; was 3.9x:
    # the example KV cache, drawn through a float32 twin, not the trace), fp32 1.25x (6.35 GB; was 2.6x)
    assert peak <= 2.2 * weights, f"peak RSS {peak / 2**30:.2f} GiB is {peak / weights:.1f}x the weights"


def test_aoti_export_of_the_real_model(tmp_path):
    from arvid.export.aoti import WEIGHTS_FILE, load_package

    out = tmp_path / "aoti16"
    r, wall, peak = _arvid("export", "aoti", *WAN, "--dtype", "bf16", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    package = out / "step_f3.pt2"
    weights = (out / WEIGHTS_FILE).stat().st_size
    assert abs(weights - STEP_WEIGHTS_BF16) < 0.01 * weights  # the step's weights, once, beside the package
    assert package.stat().st_size < 2**27  # kernels only: the constants stay out of the .so
    graphs = load_package(out, device="cpu")  # the package and its constants, from the weights file
    assert graphs.step is not None and len(graphs.constants[0]) == len(graphs.step.get_constant_fqns())
    man = json.loads((out / "export.json").read_text())
    # a day of bf16 matmuls on this CPU: the parity is a GPU measurement, said so, not run
    assert "on a GPU" in man["parity"][package.name]["skipped"]
    assert "compile" in r.stderr and man["peak_rss_bytes"] > 0  # stages said; the peak kept in the manifest
    print(json.dumps({"dtype": "bf16", "wall_s": round(wall), "peak_rss": peak, "weights": weights}))
    # issue 26: about 2x the weights. The constants inside the .so were the peak: inductor copies them all
    # into one buffer for it (5.71 GiB at 1.3B, measured), then the packaging read the 2.5 GB .so back whole
    assert peak <= 2.2 * weights, f"peak RSS {peak / 2**30:.2f} GiB is {peak / weights:.1f}x the weights"
