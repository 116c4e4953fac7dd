"""`arvid export check|onnx|trt`: exit codes, one-line errors, reuse by key."""

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from arvid.cli import build_parser, main  # noqa: E402


def _save(path, nodes):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("trt", 1)] if any(n.domain for n in nodes) else [])
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets), path)


def test_export_subcommands_are_registered():
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "export" in a.choices)
    inner = next(a for a in sub.choices["export"]._actions if getattr(a, "choices", None))
    assert {"onnx", "trt", "check"} <= set(inner.choices)


def test_check_exit_codes(tmp_path, capsys):
    _save(tmp_path / "ok.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    assert main(["export", "check", str(tmp_path / "ok.onnx")]) == 0
    assert "ready for TensorRT 10" in capsys.readouterr().out
    _save(
        tmp_path / "bad.onnx",
        [
            helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
            helper.make_node("TRT_FP8QuantizeLinear", ["d"], ["y"], domain="trt"),
        ],
    )
    assert main(["export", "check", str(tmp_path / "bad.onnx")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "NOT ready" in out[0] and any(line.strip().startswith("double:") for line in out[1:])
    assert any(line.strip().startswith("custom-domain:") for line in out[1:])
    assert main(["export", "check", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no ONNX file" in err


def test_trt_without_tensorrt_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["export", "trt", "--preset", "tiny", "--graph", "step", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TensorRT is not installed" in err and "pip install tensorrt" in err
    assert not (tmp_path / "o").exists()


def test_bad_combinations_are_clear(tmp_path, capsys):
    argv = ["export", "onnx", "--preset", "tiny", "--graph", "vae-step", "--quant", "fp8", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "not the VAE step" in capsys.readouterr().err


def test_export_onnx_step_then_check_and_reuse(tmp_path, capsys):
    import json

    import onnxruntime as ort

    out = tmp_path / "step"
    argv = ["export", "onnx", "--preset", "tiny", "--graph", "step", "--torchscript", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    man = json.loads((out / "export.json").read_text())
    assert man["artifact"] == ["step.onnx"] and man["graph"] == "step" and man["exporter"] == "torchscript"
    assert [t["name"] for t in man["spec"]["inputs"]][:3] == ["x", "t_freq", "sigma"]
    assert max(man["parity"]["step.onnx"].values()) < 1e-5 and len(man["weights_sha256"]) == 64
    assert man["rope_positions"] >= 1024 and man["versions"]["onnxruntime"]
    onnx.checker.check_model(str(out / "step.onnx"))
    ort.InferenceSession(str(out / "step.onnx"), providers=["CPUExecutionProvider"])
    assert main(["export", "check", str(out / "step.onnx")]) == 0  # no DOUBLE: t_freq comes from the host
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "step.onnx", "step.onnx.data"]
    # the weights are external data, hashed in the manifest with the graph; a cut-short file is rebuilt
    files = man["files"]
    assert set(files) == {"step.onnx", "step.onnx.data"} and all(len(f["sha256"]) == 64 for f in files.values())
    assert files["step.onnx.data"]["bytes"] == (out / "step.onnx.data").stat().st_size > 100_000
    assert man["peak_rss_bytes"] > 0 and man["graphs"][0]["stages_s"]["trace"] > 0
    with (out / "step.onnx.data").open("r+b") as f:
        f.truncate(1000)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "peak RSS" in printed
    assert (out / "step.onnx.data").stat().st_size == files["step.onnx.data"]["bytes"]
