"""The output a new user reads (issue #25, item 5): one clean "What is timed", modelopt's chatter off
stdout, one way to count sizes, every differing setting named in A/B reports, report --html writing
one file, SQNR as numbers, the example prompt file shipped."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from arvid.bench.report import compare_runs, format_comparison, format_table, markdown_to_html
from arvid.bench.stream_bench import run_stream_bench
from arvid.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    return run_stream_bench(
        "tiny", device=torch.device("cpu"), dtype=torch.float32, backends=["eager", "sdpa"], frames=6, warmup=1,
        rounds=1, threads=1,
    )  # fmt: skip


def _what_is_timed(text: str) -> str:
    return next(line for line in text.splitlines() if "What is timed" in line)


def test_what_is_timed_is_plain_text_in_every_format(report):
    line = _what_is_timed(format_table(report))
    assert "`" not in line and "the first --warmup chunks" in line.lower()
    html = markdown_to_html(format_table(report))
    assert "<code></code>" not in html and "``" not in html
    old = copy.deepcopy(report)  # a report written before: reStructuredText literals in its methodology
    old["methodology"] = old["methodology"].replace("--warmup chunks", "``warmup`` chunks")
    assert "``" in old["methodology"]
    assert "`" not in _what_is_timed(format_table(old))


def test_ab_report_names_every_setting_that_differs(report):
    b = copy.deepcopy(report)
    b["vae_decode_timed"] = True
    b["rounds"] = 3
    b["environment"]["torch_threads"] = 4
    c = compare_runs(report, b)
    assert c["mismatches"] == ["rounds: 1 vs 3", "--vae (VAE decode timed): False vs True", "torch_threads: 1 vs 4"]
    assert "--vae (VAE decode timed): False vs True" in format_comparison(c)
    assert compare_runs(report, copy.deepcopy(report))["mismatches"] == []


def test_report_html_writes_only_the_page(report, tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps(report))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["report", str(run), "--html", str(out / "x.html")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.html"]
    page = (out / "x.html").read_text()
    assert page.count("data:image/png;base64,iVBOR") == 2  # both plots embedded, PNG data
    assert main(["report", str(run), "--markdown", str(out / "x.md")]) == 0  # Markdown links its plots
    assert sorted(p.name for p in out.iterdir()) == ["x.html", "x.md", "x_plots"]


def test_quality_and_quantize_count_sizes_one_way():
    """The same scheme on the same model: quality's float32 reference and quantize's BF16 file give one size."""
    from arvid.quant import config_for_scheme, model_size_report, quantize_
    from arvid.runtime import build_model, get_preset

    cfg = get_preset("tiny").model
    for scheme in ("int8", "int8-weight-only", "fp8"):
        in_fp32 = quantize_(build_model(cfg, seed=0), config_for_scheme(scheme))
        in_bf16 = quantize_(build_model(cfg, seed=0).to(torch.bfloat16), config_for_scheme(scheme))
        assert model_size_report(in_fp32, float_dtype=torch.bfloat16) == model_size_report(in_bf16), scheme
        assert model_size_report(in_fp32)["stored_bytes"] > model_size_report(in_bf16)["stored_bytes"]


@pytest.mark.slow  # 15 s on the 2-core test machine, most of it importing modelopt
def test_modelopt_chatter_goes_to_the_log_not_stdout(capsys, caplog):
    pytest.importorskip("modelopt.torch.quantization")
    import logging

    from arvid.quant.calibrate import calibrate_modelopt
    from arvid.runtime import build_model, get_preset

    model = build_model(get_preset("tiny").model, seed=0)
    x = torch.randn(2, 8, model.cfg.dim)

    def loop(m):  # the blocks' linears see data: enough for modelopt to insert and calibrate
        for block in m.blocks:
            block.ffn(x)

    with caplog.at_level(logging.INFO, logger="arvid.quant.calibrate"):
        calibrate_modelopt(model, "int8-smoothquant", loop)
    assert capsys.readouterr().out == ""
    assert any("modelopt: " in r.getMessage() for r in caplog.records)


def test_export_summary_prints_sqnr_as_numbers(capsys):
    from arvid.commands.export import _summary

    _summary({"graphs": [{"artifact": "step.onnx", "nodes": 3, "opset": 17, "parity": {"x0": 1e-6},
                          "sqnr_db_vs_float": {"x0": 41.234, "k": 38.5}}]})  # fmt: skip
    out = capsys.readouterr().out
    assert "SQNR vs float x0 41.23 dB, k 38.50 dB" in out and "{" not in out


def test_the_readme_example_prompt_file_is_shipped():
    from arvid.runtime.prompts import read_prompt_jsonl

    readme = (ROOT / "README.md").read_text()
    assert "--prompts examples/example.jsonl --switch-frames 40,80,120" in readme
    videos = read_prompt_jsonl(ROOT / "examples" / "example.jsonl", num_switches=3)
    assert len(videos) == 2 and all(len(v) == 4 for v in videos)
