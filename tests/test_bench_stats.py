"""Benchmark statistics, warnings, the run estimate, quantized bench variants, and `arvid report A B`."""

import json
import statistics

import numpy as np
import pytest
import torch
from _bench import tiny_report

from arvid.bench.estimate import ESTIMATE_LIMIT_S, check_estimate, estimate_seconds
from arvid.bench.report import (
    compare_runs,
    format_comparison,
    load_report,
    markdown_to_html,
    slower_variants,
    upgrade_report,
)
from arvid.bench.stats import bootstrap_ratio_ci, mann_whitney, noise_warnings, summarize
from arvid.bench.stream_bench import run_stream_bench
from arvid.bench.variants import check_variants
from arvid.cli import main
from arvid.runtime import GeneratorOptions, get_preset
from arvid.runtime.loaders import load_dit

CPU = torch.device("cpu")


# -- statistics ----------------------------------------------------------------------------------
def test_summarize():
    xs = [10.0, 12.0, 11.0, 30.0, 10.5, 11.5]
    s = summarize(xs)
    assert s["n"] == 6 and s["p50"] == pytest.approx(statistics.median(xs))
    assert s["mean"] == pytest.approx(statistics.fmean(xs)) and s["std"] == pytest.approx(statistics.stdev(xs))
    assert s["cv"] == pytest.approx(s["std"] / s["mean"])
    assert s["iqr"] == pytest.approx(np.percentile(xs, 75) - np.percentile(xs, 25))
    assert s["min"] <= s["p25"] <= s["p50"] <= s["p75"] <= s["p90"] <= s["p99"] <= s["max"] == 30.0
    assert summarize([5.0])["std"] == 0.0
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_mann_whitney_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    cases = [
        (rng.normal(10, 1, 20), rng.normal(10, 1, 25)),  # same distribution
        (rng.normal(10, 1, 12), rng.normal(11, 1, 12)),  # shifted
        ([1, 2, 2, 3, 3, 3, 4], [2, 3, 3, 4, 4, 5, 5, 6]),  # ties
    ]
    for a, b in cases:
        want = scipy_stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
        assert mann_whitney(a, b) == pytest.approx(want, rel=1e-9)
    assert mann_whitney([1.0] * 5, [1.0] * 5) == 1.0  # all tied: no evidence of a difference
    assert mann_whitney(range(10), range(100, 110)) < 1e-3


def test_bootstrap_ratio_ci():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 0.5, 30), rng.normal(15, 0.5, 30)
    lo, hi = bootstrap_ratio_ci(a, b)
    assert lo < np.median(b) / np.median(a) < hi and lo > 1.3 and hi < 1.7


def test_noise_warnings():
    quiet, noisy = {"backend": "eager", "chunk_ms_cv_steady": 0.02}, {"backend": "sdpa", "chunk_ms_cv_steady": 0.25}
    assert noise_warnings([quiet], [[0.5, 0.5, 0.5], None], threads=1, cores=2) == []
    (w,) = noise_warnings([quiet, noisy], [None], threads=1, cores=2)
    assert w.startswith("sdpa: steady-state chunk latency varies by 25% (coefficient of variation, over 10%)")
    (w,) = noise_warnings([quiet], [[1.0, 1, 1], [3.2, 2, 1]], threads=1, cores=2)
    assert w.startswith("machine busy: load average 3.20 on 2 cores while this run used 1 thread(s)")
    assert noise_warnings([quiet], [[8.0, 1, 1]], threads=8, cores=16) == []  # our own 8 threads


# -- the estimate and the refusal ----------------------------------------------------------------
def test_estimate_refuses_the_real_preset_on_a_cpu():
    kw = dict(device=CPU, dtype=torch.float32, variants=2, rounds=3, flops_per_s=1e11)
    real = estimate_seconds("wan2.1-t2v-1.3b", **kw)
    # 141 TFLOP per chunk at the shipped settings (the design brief), 10 chunks x 2 variants x 3 rounds
    assert real["flops"] / real["chunks"] == pytest.approx(141e12, rel=0.01) and real["chunks"] == 60
    assert real["seconds"] > ESTIMATE_LIMIT_S
    with pytest.raises(ValueError, match=r"at least [\d,]+ min .* pass --yes"):
        check_estimate(real, yes=False)
    check_estimate(real, yes=True)
    tiny = estimate_seconds("tiny", **kw)
    assert tiny["seconds"] < 1
    check_estimate(tiny, yes=False)


def test_vae_estimate_times_the_presets_own_vae_convolutions(monkeypatch):
    """--vae adds the timed convolutions of the VAE bench builds (tiny: base_dim 8), per latent frame
    and video, rather than the Wan VAE's FLOPs over the matmul rate (issue
    #25: 273 s estimated for a 26 s run of the tiny preset)."""
    import arvid.bench.estimate as est

    seen = []

    def fake(convs, device, dtype, *, max_flops):
        seen.append(convs)
        return 0.25

    monkeypatch.setattr(est, "measured_conv_seconds", fake)
    assert est.vae_chunk_seconds("tiny", CPU, torch.float32, chunk_frames=3, batch_size=2) == 0.25 * 3 * 2
    # the widest convolution is the middle block's to_qkv: 3 x (4 x base_dim)
    assert max(max(c[0], c[1]) for c in seen[0]) == 3 * 32
    est.vae_chunk_seconds("wan2.1-t2v-1.3b", CPU, torch.float32)
    assert max(max(c[0], c[1]) for c in seen[1]) == 3 * 384
    kw = dict(device=CPU, dtype=torch.float32, variants=2, frames=90, warmup=2, rounds=1, flops_per_s=1e10)
    without = estimate_seconds("tiny", **kw)
    with_vae = estimate_seconds("tiny", **kw, vae=True, vae_seconds_per_chunk=0.5)
    assert with_vae["vae_seconds"] == 0.5 * 60 and with_vae["seconds"] == without["seconds"] + 30
    assert with_vae["flops"] == without["flops"]  # the DiT's: the VAE part is timed, not counted in FLOPs


def test_conv_timing_scales_a_shrunk_convolution_by_its_pixels():
    from arvid.bench.estimate import measured_conv_seconds

    small = measured_conv_seconds([(8, 8, 27, 1, 64, 1)], CPU, torch.float32)
    assert 0 < small < 1
    # timed on at most max_flops, then scaled by pixels: 100 calls of it are counted 100 times
    many = measured_conv_seconds([(8, 8, 27, 1, 64, 100)], CPU, torch.float32)
    assert 20 * small < many < 500 * small


def test_bench_command_refuses_before_loading_the_model(capsys):
    assert main(["bench", "--preset", "wan2.1-t2v-1.3b", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arvid bench: error: this run would take at least") and "--yes" in err
    assert len(err.strip().splitlines()) == 1


# -- quantized variants --------------------------------------------------------------------------
def test_quant_variant_strings():
    opts = GeneratorOptions.from_variant("sdpa+int8wo+fp8kv")
    assert (opts.quant, opts.fp8kv, opts.variant) == ("int8wo", True, "sdpa+fp8kv+int8wo")
    with pytest.raises(ValueError, match="choose one quantization"):
        GeneratorOptions.from_variant("sdpa+int8+fp8")
    model = load_dit(config=get_preset("tiny").model, device=CPU, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="runs a int8-quantized DiT, but the model is not quantized"):
        GeneratorOptions.from_variant("sdpa+int8").build(model, latent_size=(8, 8))
    with pytest.raises(ValueError, match="already quantized; drop \\+int8"):
        check_variants(["eager", "sdpa+int8@somewhere"])
    with pytest.raises(FileNotFoundError, match="nowhere is not a directory"):
        check_variants(["eager", "sdpa@nowhere"])


def test_bench_times_quantized_variants_beside_the_baseline(tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", "--scheme", "int8", "--dtype", "fp32", "--out", str(out)]) == 0
    capsys.readouterr()
    js = tmp_path / "q.json"
    argv = ["bench", "--frames", "6", "--warmup", "1", "--rounds", "1", "--backend", "sdpa,sdpa+fp8"]
    assert main([*argv, "--variant", str(out), "--json", str(js)]) == 0  # --variant DIR: on the default backend
    report = json.loads(js.read_text())
    assert [v["backend"] for v in report["variants"]] == ["sdpa", "sdpa+fp8", f"sdpa@{out}"]
    base, fp8, saved = report["variants"]
    assert base["quant"] is None
    assert fp8["quant"] == {"scheme": "fp8", "backend": "emulate", "source": "quantized in-process"}
    assert saved["quant"]["scheme"] == "int8" and saved["quant"]["source"] == str(out)
    for v in (fp8, saved):  # quantization changes the numbers, a little
        assert 0 < v["max_abs_diff_vs_baseline"] < 1
    assert "round 1/1 sdpa+fp8" in capsys.readouterr().err  # the progress bar


# -- quantize / bench options --------------------------------------------------------------------
def test_quantize_defaults_to_bf16_and_takes_no_stream_options(tmp_path, capsys):
    from arvid.cli import build_parser

    out = tmp_path / "w8"
    assert main(["quantize", "--scheme", "int8-weight-only", "--out", str(out)]) == 0
    doc = json.loads((out / "quant_config.json").read_text())
    assert doc["compute_dtype"] == "bfloat16" and doc["sizes"]["stored_bytes"] < doc["sizes"]["bf16_bytes"]
    assert "the whole model in BF16" in capsys.readouterr().out
    help_text = build_parser()._subparsers._group_actions[0].choices["quantize"].format_help()
    assert "--frames" not in help_text and "--switch-frames" not in help_text and "--no-global-sink" not in help_text
    existing = tmp_path / "file.bin"
    existing.write_text("x")
    assert main(["quantize", "--scheme", "int8", "--out", str(existing)]) == 2
    assert capsys.readouterr().err.strip() == f"arvid quantize: error: --out {existing}: is a file, not a directory"


def test_bench_options():
    from arvid.cli import build_parser

    p = build_parser()
    args = p.parse_args(["bench"])
    assert (args.rounds, args.threads, args.batch_size, args.yes, args.quiet) == (3, 1, 1, False, False)
    assert p.parse_args(["bench", "--backend", "eager,sdpa"]).backends == "eager,sdpa"
    assert p.parse_args(["bench", "--backends", "eager,sdpa"]).backends == "eager,sdpa"  # deprecated alias
    assert "--backends" not in p._subparsers._group_actions[0].choices["bench"].format_help()


# -- `arvid report A B` --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_a():
    return tiny_report()


def _scaled(report: dict, factor: dict[str, float]) -> dict:
    """A copy of ``report`` whose per-chunk latencies are multiplied per variant (a synthetic run B)."""
    out = json.loads(json.dumps(report))
    out["schema"] = "arvid.stream_bench/1"  # re-derive every statistic from the latencies
    for v in out["variants"]:
        v["chunk_ms"] = [ms * factor.get(v["backend"], 1.0) for ms in v["chunk_ms"]]
    return upgrade_report(out)


def test_compare_runs(run_a):
    # x3: clearly apart even when a shared machine makes the per-chunk latencies vary by tens of percent
    b = _scaled(run_a, {"sdpa": 3.0})
    c = compare_runs(run_a, b)
    eager, sdpa = c["variants"]
    assert eager["delta_pct"] == pytest.approx(0) and not eager["significant"]
    assert sdpa["delta_pct"] == pytest.approx(200) and sdpa["significant"] and sdpa["p_value"] < 0.05
    assert sdpa["ratio_ci95"][0] <= 3.0 <= sdpa["ratio_ci95"][1]
    assert [r["variant"] for r in slower_variants(c, 10)] == ["sdpa"] and slower_variants(c, 250) == []
    md = format_comparison(c)
    assert "| sdpa |" in md and "+200.0 %" in md and "**slower**" in md and "no significant change" in md
    fewer = json.loads(json.dumps(b))
    fewer["variants"] = fewer["variants"][:1]
    fewer["preset"] = "other"
    c = compare_runs(run_a, fewer)
    assert c["only_in_a"] == ["sdpa"] and c["mismatches"] == ["preset: 'tiny' vs 'other'"]


def test_upgrade_of_a_v1_report(run_a):
    old = json.loads(json.dumps(run_a))
    old["schema"] = "arvid.stream_bench/1"
    for v in old["variants"]:
        for k in [k for k in v if k.startswith("chunk_ms_") or k in ("latent_fps", "round_p50_ms")]:
            del v[k]
    new = upgrade_report(old)
    assert new["schema"] == "arvid.stream_bench/2" and new["upgraded_from"] == "arvid.stream_bench/1"
    for v, want in zip(new["variants"], run_a["variants"], strict=True):
        assert v["chunk_ms_p50"] == pytest.approx(want["chunk_ms_p50"])
        assert v["video_fps_dit_only"] == pytest.approx(want["video_fps_dit_only"])


def test_report_command_compares_and_gates(run_a, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(run_a))
    b.write_text(json.dumps(_scaled(run_a, {"sdpa": 3.0})))
    md, page = tmp_path / "out" / "ab.md", tmp_path / "out" / "ab.html"
    assert main(["report", str(a), str(b), "--markdown", str(md), "--html", str(page)]) == 0
    text = md.read_text()
    assert "![comparison](ab_plots/comparison.png)" in text and (md.parent / "ab_plots" / "comparison.png").exists()
    html = page.read_text()
    assert "<table>" in html and "data:image/png;base64,iVBOR" in html and "<strong>slower</strong>" in html
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--fail-if-slower", "10"]) == 1
    assert "arvid report: sdpa is 200.0 % slower in B than in A" in capsys.readouterr().err
    assert main(["report", str(a), str(b), "--fail-if-slower", "250"]) == 0
    assert main(["report", str(a), str(a), "--fail-if-slower", "0"]) == 0  # the same run: no change
    capsys.readouterr()
    assert main(["report", str(a), "--fail-if-slower", "5"]) == 2
    assert "--fail-if-slower compares two runs" in capsys.readouterr().err


def test_single_run_markdown_embeds_its_plots(run_a, tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(run_a))
    md = tmp_path / "run.md"
    assert main(["report", str(a), "--markdown", str(md), "--plots", str(tmp_path / "p")]) == 0
    text = md.read_text()
    assert "![fps by variant](p/fps_by_variant.png)" in text and "![latency per chunk](p/latency_per_chunk.png)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "missing.json"], "missing.json: no such benchmark report (write one with arvid bench --json)"),
        (["report", "--from", "no/such/dir"], "--from no/such/dir: no such directory"),
        (["report", "--from", ".", "--readme", "no/README.md"], "--readme no/README.md: no such file"),
    ],
)
def test_report_missing_paths_are_one_line_errors(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"arvid report: error: {message}"


def test_markdown_to_html_escapes():
    page = markdown_to_html("# a <b>\n\n| x | y |\n|---|---|\n| `1` | **2** |\n\n- item\n")
    assert "<h1>a &lt;b&gt;</h1>" in page and "<th>x</th>" in page and "<td><code>1</code></td>" in page
    assert "<li>item</li>" in page


def test_load_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such benchmark report"):
        load_report(tmp_path / "nope.json")


def test_batch_size_counts_every_video():
    report = run_stream_bench(
        "tiny", device=CPU, dtype=torch.float32, backends=["sdpa"], frames=6, warmup=1, rounds=1, batch_size=2
    )
    (v,) = report["variants"]
    assert report["batch_size"] == 2
    assert v["video_fps_dit_only"] == pytest.approx(4 * 2 * 3 / (v["chunk_ms_p50"] / 1000))


def test_plots_with_end_to_end_bars_and_switch_markers(run_a, tmp_path):
    timed = json.loads(json.dumps(run_a))
    timed["switch_frames"] = [6]
    for v in timed["variants"]:
        v["video_fps_end_to_end"] = v["video_fps_dit_only"] / 2
    from arvid.bench.report import plot_report

    names = [p.name for p in plot_report(timed, tmp_path)]
    assert names[:2] == ["fps_by_variant.png", "latency_per_chunk.png"]


def test_switch_and_fill_chunks_are_not_noise():
    # 8 chunks, warm-up 1: chunks 1 and 2 fill the cache (slots = 4), chunk 5 re-caches for the switch at frame 15
    report = run_stream_bench(
        "tiny", device=CPU, dtype=torch.float32, backends=["sdpa"], frames=24, warmup=1, rounds=1,
        switch_frames=(15,),
    )  # fmt: skip
    (v,) = report["variants"]
    steady = [ms for i, ms in zip(range(1, 8), v["chunk_ms"], strict=True) if i >= 3 and i != 5]
    assert v["chunk_ms_cv_steady"] == pytest.approx(statistics.stdev(steady) / statistics.fmean(steady))
