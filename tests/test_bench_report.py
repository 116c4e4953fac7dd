"""arvid bench's report on the CPU (tiny preset) and everything built from it: Markdown, plots, tables."""

import json
import shutil
import statistics

import pytest
import torch
from _bench import tiny_report

from arvid.bench.report import (
    README_END,
    README_START,
    format_table,
    load_report,
    plot_report,
    results_table,
    update_readme_results,
    write_markdown,
)
from arvid.bench.stream_bench import run_stream_bench
from arvid.cli import build_parser

VARIANT_FIELDS = {
    "backend",
    "chunk_ms",
    "first_chunk_ms",
    "peak_memory_bytes",
    "peak_reserved_bytes",
    "memory_kind",
    "cache_bytes",
    "max_abs_diff_vs_baseline",
    "chunk_ms_p50",
    "chunk_ms_p90",
    "chunk_ms_mean",
    "chunk_ms_p99",
    "chunk_ms_std",
    "chunk_ms_iqr",
    "chunk_ms_cv",
    "chunk_ms_cv_steady",
    "chunk_ms_stats",
    "round_p50_ms",
    "latent_fps",
    "video_fps_dit_only",
    "speedup_vs_baseline",
}


@pytest.fixture(scope="module")
def report():
    return tiny_report()


@pytest.fixture
def run_json(report, tmp_path):
    path = tmp_path / "2030-01-02_cpu_tiny_eager-vs-sdpa.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def test_report_fields(report):
    assert report["schema"] == "arvid.stream_bench/2" and report["statistic"] == "p50"
    assert (report["preset"], report["dtype"], report["baseline"]) == ("tiny", "float32", "eager")
    assert (report["latent_frames"], report["chunks"], report["warmup_chunks"]) == (12, 4, 1)
    assert report["model_parameters"] > 0 and report["model_bytes"] == 4 * report["model_parameters"]
    assert report["stream"]["chunk_frames"] == 3
    env = report["environment"]
    for key in ("device", "device_name", "torch", "python", "git_commit", "git_dirty", "command", "arvid"):
        assert key in env
    assert env["device"] == "cpu" and env["torch_threads"] == 1  # threads=1 was used and recorded
    assert env["load_average"] is None or len(env["load_average"]) == 3
    assert isinstance(report["warnings"], list)
    json.dumps(report)  # JSON-ready
    assert [v["backend"] for v in report["variants"]] == ["eager", "sdpa"]
    for v in report["variants"]:
        assert set(v) >= VARIANT_FIELDS
        assert len(v["chunk_ms"]) == 2 * (report["chunks"] - report["warmup_chunks"])  # 2 rounds
        assert all(ms > 0 for ms in v["chunk_ms"])
        assert v["chunk_ms_p99"] >= v["chunk_ms_p90"] >= v["chunk_ms_p50"] > 0
        assert min(v["chunk_ms"]) <= v["chunk_ms_mean"] <= max(v["chunk_ms"])
        assert v["chunk_ms_p50"] == pytest.approx(statistics.median(v["chunk_ms"]))
        assert v["chunk_ms_std"] == pytest.approx(statistics.stdev(v["chunk_ms"]))
        assert v["chunk_ms_cv"] == pytest.approx(v["chunk_ms_std"] / v["chunk_ms_mean"])
        assert len(v["round_p50_ms"]) == 2
        assert v["video_fps_dit_only"] == pytest.approx(4 * v["latent_fps"])
        # FPS and the speed-up come from one statistic, the median
        assert v["latent_fps"] == pytest.approx(3 / (v["chunk_ms_p50"] / 1000))
        assert v["first_chunk_ms"] > 0 and v["peak_memory_bytes"] > 0 and v["memory_kind"] == "process_rss"
        assert v["max_abs_diff_vs_baseline"] < 1e-4
    base, sdpa = report["variants"]
    assert base["speedup_vs_baseline"] == 1.0 and base["max_abs_diff_vs_baseline"] == 0.0
    assert sdpa["speedup_vs_baseline"] == pytest.approx(base["chunk_ms_p50"] / sdpa["chunk_ms_p50"])
    assert sdpa["cache_bytes"] > 0
    assert "| eager |" in format_table(report) and "| sdpa |" in format_table(report)


def test_markdown(report, tmp_path):
    path = write_markdown(report, tmp_path / "sub" / "run.md")
    text = path.read_text()
    assert text.startswith("# arvid bench: tiny on ")
    assert "| sdpa |" in text and "## Environment" in text and "torch" in text
    assert "Measured vs roofline" not in text  # a CPU run has no ceiling to compare with
    assert not list(tmp_path.glob("sub/.*"))  # no temporary file left behind


def test_markdown_shows_the_roofline_on_a_known_gpu(report, tmp_path):
    gpu_run = json.loads(json.dumps(report))
    gpu_run["environment"].update(device="cuda:0", device_name="NVIDIA H100 80GB HBM3")
    text = write_markdown(gpu_run, tmp_path / "run.md").read_text()
    assert "Measured vs roofline ceiling (h100, bf16" not in text  # float32: no tensor-core ceiling
    gpu_run["dtype"] = "bfloat16"
    text = write_markdown(gpu_run, tmp_path / "run.md").read_text()
    assert "Measured vs roofline ceiling (h100, bf16" in text and "fraction of ceiling" in text


def test_plots(report, tmp_path):
    varying = json.loads(json.dumps(report))
    for v in varying["variants"]:
        v["memory_bytes_per_chunk"] = [2**20 * (100 + 10 * i) for i in range(report["chunks"])]
    paths = plot_report(varying, tmp_path / "plots")
    assert [p.name for p in paths] == ["fps_by_variant.png", "latency_per_chunk.png", "memory_over_video.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    # a flat memory line (or none recorded) carries no information: no memory plot
    flat = json.loads(json.dumps(report))
    for v in flat["variants"]:
        v["memory_bytes_per_chunk"] = [2**30] * report["chunks"]
    assert [p.name for p in plot_report(flat, tmp_path / "plots2")] == ["fps_by_variant.png", "latency_per_chunk.png"]
    for v in flat["variants"]:
        del v["memory_bytes_per_chunk"]
    assert [p.name for p in plot_report(flat, tmp_path / "plots3")] == ["fps_by_variant.png", "latency_per_chunk.png"]


def test_results_table(run_json, tmp_path):
    results = run_json.parent
    (results / "micro.json").write_text(json.dumps({"benchmarks": []}))  # pytest-benchmark output: skipped
    (results / "notes.txt").write_text("not a run")
    table = results_table(results)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| GPU | preset | dtype | variant | p50 ms")
    assert len(rows) == 3  # header + eager + sdpa
    assert "| tiny | float32 | sdpa |" in table and "2030-01-02" in table and "1.00x" in table
    assert "left out: micro.json" in table
    (results / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON"):
        results_table(results)


def test_results_table_empty(tmp_path):
    assert "No benchmark runs committed yet" in results_table(tmp_path)


def test_update_readme_results(run_json, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# arvid\n\n## Results\n\n{README_START}\nold table\n{README_END}\n\nMore text.\n")
    assert update_readme_results(readme, run_json.parent) is True
    text = readme.read_text()
    assert "old table" not in text and "| tiny | float32 | eager |" in text
    assert text.startswith("# arvid\n\n## Results\n\n") and text.endswith(f"{README_END}\n\nMore text.\n")
    assert update_readme_results(readme, run_json.parent) is False  # idempotent
    for bad in ("# no markers\n", f"{README_END}\n{README_START}\n", f"{README_START}\n{README_START}\n{README_END}"):
        readme.write_text(bad)
        with pytest.raises(ValueError, match="results:start"):
            update_readme_results(readme, run_json.parent)
        assert readme.read_text() == bad  # untouched


def _cli(argv):
    """`arvid report ARGV` with ValueError raised (``arvid.cli.main`` would print it and return 2)."""
    args = build_parser().parse_args(["report", *argv])
    return args.func(args)


def test_cli(run_json, tmp_path, capsys):
    assert _cli([str(run_json), "--plots", str(tmp_path / "p"), "--markdown", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "p" / "fps_by_variant.png").exists() and (tmp_path / "r.md").exists()
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    assert _cli(["--from", str(run_json.parent), "--readme", str(readme)]) == 0
    assert "| sdpa |" in readme.read_text()
    assert _cli(["--from", str(run_json.parent)]) == 0
    assert "| eager |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="run JSON"):
        _cli([])
    with pytest.raises(ValueError, match="--readme needs --from"):
        _cli([str(run_json), "--readme", str(readme)])
    other = tmp_path / "other.json"
    shutil.copy(run_json, other)
    other.write_text(json.dumps({"schema": "x"}))
    with pytest.raises(ValueError, match=r"other\.json: not an arvid\.stream_bench report \(schema 'x'"):
        load_report(other)


@pytest.mark.slow
def test_vae_decode_is_timed_apart_for_end_to_end_fps():
    report = run_stream_bench(
        "tiny",
        device=torch.device("cpu"),
        dtype=torch.float32,
        backends=["sdpa"],
        frames=9,
        warmup=1,
        vae=True,
        rounds=1,
    )
    v = report["variants"][0]
    assert report["vae_decode_timed"] is True
    assert len(v["vae_ms"]) == 2 and v["vae_ms_p50"] > 0
    # end to end = 12 video frames per chunk over the median DiT + VAE time: below the DiT-only rate
    want = 12 / (statistics.median(c + d for c, d in zip(v["chunk_ms"], v["vae_ms"], strict=True)) / 1000)
    assert v["video_fps_end_to_end"] == pytest.approx(want)
    assert v["video_fps_end_to_end"] < v["video_fps_dit_only"]
