"""Every Triton kernel config compiled for sm_90 and sm_120 on the CPU: what the pruning keeps fits, and
the shared-memory model that prunes never under-estimates what Triton allocates.

The compile runs in a subprocess: the tests' conftest turns the Triton interpreter on, and compiling
for a GPU needs the real JIT functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from arvid.bench.kernel_resources import SMEM_LIMIT, parse_arch

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kr") / "k.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "arvid.bench.kernel_resources", "--arch", "sm_90,sm_120", "--json", str(out), "--quiet"],
        env=env,
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


@pytest.mark.slow
def test_every_config_compiles_for_both_targets(report):
    rows = report["attention"]
    assert {r["arch"] for r in rows} == {"sm_90", "sm_120"}
    assert len(rows) == 2 * 2 * 2 * 10  # targets x dtypes x (cache dtype, FP8) x configs
    assert len(report["append"]) == 2 * 2 * 2
    assert all(r["registers"] and r["shared_bytes"] > 0 for r in rows)


@pytest.mark.slow
def test_shared_memory_model_never_under_estimates(report):
    low = [r for r in report["attention"] if r["smem_model_bytes"] < r["shared_bytes"]]
    assert not low, [(r["arch"], r["dtype"], r["fp8_cache"], r["block_m"], r["block_n"], r["num_stages"]) for r in low]


@pytest.mark.slow
def test_kept_configs_fit_and_a_spill_free_one_is_kept_where_one_exists(report):
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


@pytest.mark.slow
def test_heavy_spill_table_covers_the_installed_triton(report):
    from arvid.kernels.sink_window_attention import _HEAVY_SPILLS_D128, SPILL_TOLERATED_BYTES

    missing = [
        (r["arch"], r["dtype"], r["fp8_cache"], (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]))
        for r in report["attention"]
        if r["spill_store_bytes"] > SPILL_TOLERATED_BYTES
        and (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])
        not in _HEAVY_SPILLS_D128[(int(r["arch"][3:]), r["fp8_cache"])]
    ]
    assert not missing, f"triton {report['triton']}: configs spilling heavily that the pruning keeps: {missing}"
