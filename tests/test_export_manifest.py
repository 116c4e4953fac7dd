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


def test_weight_hash_is_computed_once_per_model_and_follows_changes(monkeypatch):
    """Hashed once per model (the 1.3B weights are 2.8 GB to read), again after any in-place write or a
    weight assigned anew, and equal to the hash of the same state dict."""
    from arvid.export import manifest as mf

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    calls = []
    real = mf._hash_state
    monkeypatch.setattr(mf, "_hash_state", lambda sd: calls.append(1) or real(sd))
    first = mf.weight_hash(model)
    assert mf.weight_hash(model) == first and len(calls) == 1
    assert first == real(model.state_dict())
    with torch.no_grad():
        model[0].weight[0, 0] += 1  # in place: the version counter moves
    second = mf.weight_hash(model)
    assert second != first and len(calls) == 2
    model[1].weight = torch.nn.Parameter(torch.zeros(4))  # assigned anew: another storage
    assert mf.weight_hash(model) not in (first, second) and len(calls) == 3


def test_aoti_package_folders_are_keyed_by_the_stream_settings(tmp_path):
    """The ``aoti`` engine's cache folder holds what its packages' key holds: LongLive's scenarios in one
    process (the sink kept and rebuilt at a switch, and a second run of the first) share one folder, whose
    step + 3 re-cache spans are 4 packages (at most 8 asked), where one folder keyed without the stream
    settings compiled all 4 for each scenario (12); other graph settings get their own folder."""
    from arvid.export.aoti import package_dir
    from arvid.export.graphs import recache_graph_spans

    preset = get_preset("tiny")
    model = build_model(preset.model, seed=0)
    hw = (preset.latent_height, preset.latent_width)
    scenarios = [StreamConfig(), StreamConfig(global_sink=False), StreamConfig()]
    dirs = {package_dir(tmp_path, model, s, hw, 1): s for s in scenarios}
    assert len(dirs) == 1 and sum(1 + len(recache_graph_spans(s)) for s in dirs.values()) == 4
    assert package_dir(tmp_path, model, StreamConfig(attention_frames=9), hw, 1) not in dirs
    assert package_dir(tmp_path, model, StreamConfig(), hw, 2) not in dirs
    assert package_dir(tmp_path, build_model(preset.model, seed=1), StreamConfig(), hw, 1) not in dirs


def test_one_cache_root_under_one_variable(monkeypatch, tmp_path):
    from arvid.export.artifacts import aoti_cache_root, cache_root

    monkeypatch.setenv("ARVID_AOTI_CACHE", str(tmp_path / "old"))  # the variable before 0.1: read no more
    monkeypatch.setenv("ARVID_EXPORT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and aoti_cache_root() == tmp_path / "aoti"
    monkeypatch.delenv("ARVID_EXPORT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert aoti_cache_root() == tmp_path / "xdg" / "arvid" / "export" / "aoti"
