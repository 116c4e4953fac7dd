"""export/manifest.py: export.json contents, weight hash, reuse key, atomic writes."""

import json

import pytest
import torch

from arvid.export import manifest as mf
from arvid.runtime import StreamConfig, build_model, get_preset


def _spec():
    return {
        "name": "step",
        "inputs": [{"name": "x", "shape": (1, 3, 16, 8, 8), "dtype": torch.float32}],
        "outputs": [{"name": "x0", "shape": (1, 3, 16, 8, 8), "dtype": torch.float32}],
        "meta": {"rope_positions": 64},
    }


def test_weight_hash_is_stable_and_sensitive():
    cfg = get_preset("tiny").model
    a, b = build_model(cfg, seed=0), build_model(cfg, seed=0)
    assert mf.weight_hash(a) == mf.weight_hash(b) == mf.weight_hash(a.state_dict())
    with torch.no_grad():
        b.head.head.bias[0] += 1e-3
    assert mf.weight_hash(a) != mf.weight_hash(b)


def test_manifest_round_trip_and_reuse(tmp_path):
    cfg = get_preset("tiny").model
    model = build_model(cfg)
    key = mf.reuse_key(graph="step", weights=mf.weight_hash(model), opset=18)
    assert key == mf.reuse_key(opset=18, weights=mf.weight_hash(model), graph="step")  # order-free
    assert key != mf.reuse_key(graph="step", weights=mf.weight_hash(model), opset=20)
    (tmp_path / "step.onnx").write_bytes(b"x")
    man = mf.build_manifest(
        artifact="step.onnx",
        format="onnx",
        spec=_spec(),
        key=key,
        model_config=cfg,
        stream_config=StreamConfig(),
        weights=mf.weight_hash(model),
        opset=18,
        parity={"x0": 1.5e-6},
        rope_positions=64,
        extra={"exporter": "dynamo", "notes": ["t_freq is computed on the host"]},
    )
    path = mf.write_manifest(tmp_path, man)
    data = json.loads(path.read_text())
    assert data["spec"]["inputs"][0] == {"name": "x", "shape": [1, 3, 16, 8, 8], "dtype": "float32"}
    assert data["model_config"]["dim"] == cfg.dim and data["stream_config"]["chunk_frames"] == 3
    assert data["versions"]["torch"] == torch.__version__ and "onnx" in data["versions"]
    assert data["device"]["device"] == "cpu" and data["opset"] == 18 and data["rope_positions"] == 64
    assert data["parity"] == {"x0": 1.5e-6} and data["exporter"] == "dynamo"
    assert len(data["weights_sha256"]) == 64
    assert mf.read_manifest(tmp_path)["key"] == key
    assert mf.reusable(tmp_path, key) is not None
    assert mf.reusable(tmp_path, "other") is None
    (tmp_path / "step.onnx").unlink()
    assert mf.reusable(tmp_path, key) is None  # the artifact it names is gone
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]  # no temporaries left


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        mf.atomic_replace(tmp_path / "export.json", boom)
    assert list(tmp_path.iterdir()) == []


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="no export manifest"):
        mf.read_manifest(tmp_path)
    (tmp_path / "export.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid export manifest"):
        mf.read_manifest(tmp_path)
