"""Every Triton kernel config compiled for sm_90 and sm_120 on the CPU: what the pruning keeps fits, and
the shared-memory model that prunes never under-estimates what Triton allocates.

Compiling all 168 kernels takes 5 to 20 minutes on 2 cores, so the default run checks the model and the
pruning of this commit against the measured table committed for the installed Triton
(``bench/results/kernel_resources/triton-<version>.json``, written by the tool itself), and compiles a
few configs to check that table still holds for this Triton; ``pytest --long`` compiles every config
again. The compiles run in a subprocess: the tests' conftest turns the Triton interpreter on, and
compiling for a GPU needs the real JIT functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arvid.bench.kernel_resources import HEAD_DIM, SMEM_LIMIT, parse_arch

triton = pytest.importorskip("triton")

TABLES = Path(__file__).resolve().parents[1] / "bench" / "results" / "kernel_resources"
MEASURED = ("shared_bytes", "registers", "spill_store_bytes", "spill_load_bytes")
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def table() -> dict:
    """The committed measured table for the installed Triton, its model columns recomputed by this commit."""
    from arvid.kernels import sink_window_attention as swa

    path = TABLES / f"triton-{triton.__version__}.json"
    if not path.is_file():
        pytest.fail(
            f"no measured kernel table for triton {triton.__version__}: run python -m arvid.bench.kernel_resources "
            f"--arch sm_90,sm_120 --json {path.relative_to(TABLES.parents[2])} (raising the triton pin needs it)"
        )
    report = json.loads(path.read_text())
    for r in report["attention"]:
        arch, kv = int(r["arch"][3:]), 1 if r["fp8_cache"] else 2
        cfg = (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])
        r["smem_model_bytes"] = swa._smem_bytes(cfg[0], cfg[1], cfg[3], HEAD_DIM, 2, kv, arch)
        r["kept"] = cfg in swa.kept_configs(
            swa._GPU_CONFIGS, arch, report["queries"], HEAD_DIM, 2, kv, SMEM_LIMIT[arch]
        )
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Every config compiled now (``--long``)."""
    out = tmp_path_factory.mktemp("kr") / "k.json"
    run = subprocess.run(
        [sys.executable, "-m", "arvid.bench.kernel_resources", "--arch", "sm_90,sm_120", "--json", str(out), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def _groups(rows):
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["dtype"], r["fp8_cache"]), []).append(r)
    return groups


@pytest.mark.parametrize("source", ["table", pytest.param("report", marks=pytest.mark.long)])
def test_every_config_compiles_for_both_targets(source, request):
    report = request.getfixturevalue(source)
    rows = report["attention"]
    assert {r["arch"] for r in rows} == {"sm_90", "sm_120"}
    assert len(rows) == 2 * 2 * 2 * 10  # targets x dtypes x (cache dtype, FP8) x configs
    assert len(report["append"]) == 2 * 2 * 2
    assert all(r["registers"] and r["shared_bytes"] > 0 for r in rows)


@pytest.mark.parametrize("source", ["table", pytest.param("report", marks=pytest.mark.long)])
def test_shared_memory_model_never_under_estimates(source, request):
    report = request.getfixturevalue(source)
    low = [r for r in report["attention"] if r["smem_model_bytes"] < r["shared_bytes"]]
    assert not low, [(r["arch"], r["dtype"], r["fp8_cache"], r["block_m"], r["block_n"], r["num_stages"]) for r in low]


@pytest.mark.parametrize("source", ["table", pytest.param("report", marks=pytest.mark.long)])
def test_kept_configs_fit_and_a_spill_free_one_is_kept_where_one_exists(source, request):
    report = request.getfixturevalue(source)
    for (arch, dtype, fp8), rows in _groups(report["attention"]).items():
        kept = [r for r in rows if r["kept"]]
        assert kept, (arch, dtype, fp8)
        for r in kept:
            assert r["shared_bytes"] <= r["smem_limit_bytes"], (arch, dtype, fp8, r)
        fitting_clean = [r for r in rows if r["shared_bytes"] <= r["smem_limit_bytes"] and not r["spill_store_bytes"]]
        if fitting_clean:
            assert any(not r["spill_store_bytes"] for r in kept), (arch, dtype, fp8)


def test_targets_parse_with_one_line_errors():
    assert parse_arch("sm_90") == 90 and parse_arch("120") == 120 and parse_arch("sm_90a") == 90
    with pytest.raises(ValueError, match="unknown target 'sm_75'"):
        parse_arch("sm_75")
    assert SMEM_LIMIT[120] < SMEM_LIMIT[90]


def test_sm120_keeps_the_spill_free_128x64_config():
    # sm_120's mma.sync reads Q from registers: the 128 x 64, 8-warp, 3-stage config needs 98,304 B
    # (compiled), under the ~99 KB per block; counting Q there (sm_90's wgmma) pruned it.
    from arvid.kernels.sink_window_attention import _GPU_CONFIGS, _smem_bytes, kept_configs

    assert _smem_bytes(128, 64, 3, 128, 2, 2, arch=120) == 98304
    kept = kept_configs(_GPU_CONFIGS, 120, 4680, 128, 2, 2, SMEM_LIMIT[120])
    assert (128, 64, 8, 3) in kept
    assert all(_smem_bytes(m, n, s, 128, 2, 2, arch=120) <= SMEM_LIMIT[120] for m, n, w, s in kept)


def test_short_chunks_keep_only_64_row_tiles_and_spilling_configs_go_where_others_fit():
    from arvid.kernels.sink_window_attention import _GPU_CONFIGS, _HEAVY_SPILLS_D128, kept_configs

    kept = kept_configs(_GPU_CONFIGS, 90, 48, 128, 2, 1, SMEM_LIMIT[90])
    assert kept and all(m == 64 for m, *_ in kept)
    kept = kept_configs(_GPU_CONFIGS, 90, 4680, 128, 2, 1, SMEM_LIMIT[90])
    assert kept and not set(kept) & _HEAVY_SPILLS_D128[(90, True)]


@pytest.mark.parametrize("source", ["table", pytest.param("report", marks=pytest.mark.long)])
def test_heavy_spill_table_covers_the_installed_triton(source, request):
    report = request.getfixturevalue(source)
    from arvid.kernels.sink_window_attention import _HEAVY_SPILLS_D128, SPILL_TOLERATED_BYTES

    missing = [
        (r["arch"], r["dtype"], r["fp8_cache"], (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]))
        for r in report["attention"]
        if r["spill_store_bytes"] > SPILL_TOLERATED_BYTES
        and (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])
        not in _HEAVY_SPILLS_D128[(int(r["arch"][3:]), r["fp8_cache"])]
    ]
    assert not missing, f"triton {report['triton']}: configs spilling heavily that the pruning keeps: {missing}"


@pytest.mark.slow  # ~30 s on 2 cores: four kernels compiled for real
def test_the_committed_table_holds_for_the_installed_triton(table):
    """bf16, each target with and without an FP8 cache: the first kept config compiled now gives the table's
    shared memory, registers and spills (the table is the installed Triton's, not an older one's)."""
    rows = [next(r for r in table["attention"] if r["dtype"] == "bf16" and r["arch"] == a and r["fp8_cache"] == f
                 and r["kept"]) for a in ("sm_90", "sm_120") for f in (False, True)]  # fmt: skip
    configs = [[int(r["arch"][3:]), r["fp8_cache"], [r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]]]
               for r in rows]  # fmt: skip
    code = (
        "import json, sys\n"
        "from arvid.bench.kernel_resources import attention_config\n"
        "print(json.dumps([attention_config(a, 'bf16', f, tuple(c)) for a, f, c in json.loads(sys.argv[1])]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, json.dumps(configs)], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for r, got in zip(rows, json.loads(run.stdout), strict=True):
        assert {k: got[k] for k in MEASURED} == {k: r[k] for k in MEASURED}, (r["arch"], r["fp8_cache"])


def test_importing_the_tool_leaves_the_interpreter_on():
    """This module imports the tool's constants: the Triton interpreter the other tests need stays on (an
    import-time unset once turned it off for the whole session, failing every Triton test after this file)."""
    import torch

    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
