"""AOTInductor export (export/aoti.py): packages + manifest, reuse by key, one-line refusals of a
manifest made for another device or model and of a corrupt package, and `arvid export aoti`."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
import torch
from _aoti import packages

from arvid.export.aoti import export_aoti, load_package, read_manifest
from arvid.export.manifest import weight_hash
from arvid.runtime import StreamConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pk(tmp_path_factory):
    return packages(tmp_path_factory)


def test_manifest_records_what_made_the_packages(pk):
    model, dirs = pk
    step, recache = (read_manifest(d) for d in dirs)
    assert step["graph"] == "step" and recache["graph"] == "recache"
    assert [p["num_frames"] for p in recache["packages"]] == [9, 12]
    for m in (step, recache):
        assert m["format"] == "aoti" and m["device"]["device"] == "cpu"
        assert m["weights_sha256"] == weight_hash(model)
        assert m["stream_config"]["attention_frames"] == 12 and m["rope_positions"] >= 36
        assert m["versions"]["torch"] == torch.__version__
        for name, par in m["parity"].items():  # measured at export against the eager graph
            assert par["max_abs_diff"] <= 1e-5, name
        names = [t["name"] for t in m["spec"]["inputs"]]
        assert names[:3] == ["x", "t_freq", "sigma"] and names[-3:] == ["write_start", "kv_len", "frame_offset"]


def test_export_reuses_a_matching_directory(pk):
    model, dirs = pk
    t0 = time.perf_counter()
    m = export_aoti(model, graph="step", stream=StreamConfig(), latent_size=(8, 8), out_dir=dirs[0])
    assert time.perf_counter() - t0 < 20  # no compile: the key matched
    assert m == read_manifest(dirs[0])


def test_loaded_package_matches_eager_graph(pk):
    from arvid.export.graphs import build_graph

    model, dirs = pk
    graphs = load_package(dirs, device="cpu", expect={"weights_sha256": weight_hash(model)})
    assert graphs.step is not None and sorted(graphs.recache) == [9, 12]
    g = build_graph("step", model, stream=StreamConfig(), latent_size=(8, 8), batch_size=1,
                    rope_positions=read_manifest(dirs[0])["rope_positions"])  # fmt: skip
    args = g.example_inputs()
    with torch.no_grad():
        want = g(*args)
    got = graphs.step(*args)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_packages_take_their_weights_from_one_file_beside_them(pk):
    """The constants stay out of the packages (issue 26: inductor's copy of them into the .so was the
    1.3B export's peak): one weights file per directory, named in the manifest, the packages' metadata
    and the manifest's digests, holding exactly the constants the directory's runners ask for."""
    from safetensors import safe_open

    from arvid.export.aoti import WEIGHTS_FILE
    from arvid.export.manifest import file_digests

    model, dirs = pk
    ffn = model.blocks[0].ffn[0].weight.detach().contiguous().view(torch.uint8).numpy().tobytes()
    for d in dirs:
        m = read_manifest(d)
        assert m["weights_file"] == WEIGHTS_FILE
        files = [p["file"] for p in m["packages"]] + [WEIGHTS_FILE]
        assert m["files"] == file_digests(d, files)
        wanted = set()
        for p in m["packages"]:
            assert ffn not in (d / p["file"]).read_bytes()  # no weights inside
            runner = torch._inductor.aoti_load_package(str(d / p["file"]))
            assert runner.get_metadata()["arvid_constants"] == WEIGHTS_FILE  # for a bare loader
            wanted |= set(runner.get_constant_fqns())
        with safe_open(str(d / WEIGHTS_FILE), framework="pt") as f:
            assert set(f.keys()) == wanted
            assert torch.equal(f.get_tensor("model.blocks.0.ffn.0.weight"), model.blocks[0].ffn[0].weight)
        assert any("lifted_tensor" in n for n in wanted)  # the RoPE tables, by a name the file can key


def test_loaded_packages_run_on_the_model_tensors_without_a_copy(pk):
    """``live`` (what the aoti executor passes): the runners read the model's own weights, the file only
    what the model does not hold (the RoPE tables, per folder: their names are numbered per graph)."""
    from arvid.export.graphs import build_graph, graph_tensors

    model, dirs = pk
    graphs = load_package(dirs, device="cpu", live=graph_tensors(model))
    w = model.blocks[1].self_attn.q.weight
    for consts in graphs.constants:
        assert consts["model.blocks.1.self_attn.q.weight"].data_ptr() == w.data_ptr()
    ropes = {consts[n].data_ptr() for consts in graphs.constants for n in consts if "lifted_tensor" in n}
    assert len(ropes) == 2 * len(dirs)  # cos and sin, read from the file: lifted names are per folder
    assert not ropes & {t.data_ptr() for t in graph_tensors(model).values()}
    g = build_graph("step", model, stream=StreamConfig(), latent_size=(8, 8), batch_size=1,
                    rope_positions=read_manifest(dirs[0])["rope_positions"])  # fmt: skip
    args = g.example_inputs(seed=3)
    with torch.no_grad():
        want = g(*args)
    for a, b in zip(graphs.step(*args), want, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_a_missing_or_broken_weights_file_is_one_line(pk, tmp_path):
    from safetensors.torch import load_file

    from arvid.export.aoti import WEIGHTS_FILE
    from arvid.runtime.files import write_safetensors

    _, dirs = pk
    bad = tmp_path / "step"
    shutil.copytree(dirs[0], bad)
    weights = (bad / WEIGHTS_FILE).read_bytes()
    (bad / WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match=r"weights.safetensors is missing: the packages of .* take their weights"):
        load_package(bad, device="cpu")
    (bad / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=r"weights.safetensors holds [\d,]+ bytes, the manifest [\d,]+") as e:
        load_package(bad, device="cpu")
    assert "\n" not in str(e.value)
    (bad / WEIGHTS_FILE).write_bytes(b"x" * len(weights))  # the right size, not safetensors
    with pytest.raises(ValueError, match=r"weights.safetensors is not a readable weights file") as e:
        load_package(bad, device="cpu")
    assert "\n" not in str(e.value)
    (bad / WEIGHTS_FILE).write_bytes(weights)
    tensors = load_file(str(bad / WEIGHTS_FILE))
    del tensors["model.head.head.weight"]
    write_safetensors(bad / WEIGHTS_FILE, tensors)
    m = json.loads((bad / "export.json").read_text())
    m["files"][WEIGHTS_FILE]["bytes"] = (bad / WEIGHTS_FILE).stat().st_size  # as a hand-edited folder would
    (bad / "export.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"has no tensor 'model.head.head.weight', which its packages need") as e:
        load_package(bad, device="cpu")
    assert "\n" not in str(e.value)


def test_manifest_mismatch_is_refused_in_one_line(pk, tmp_path):
    _, dirs = pk
    with pytest.raises(ValueError, match=r"manifest weights_sha256 is .*, this run needs") as e:
        load_package(dirs[0], device="cpu", expect={"weights_sha256": "0" * 64})
    assert "\n" not in str(e.value)
    other = tmp_path / "cuda-step"
    shutil.copytree(dirs[0], other)
    m = json.loads((other / "export.json").read_text())
    m["device"]["device"] = "cuda:0"
    (other / "export.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"built for cuda, this run is on cpu") as e:
        load_package(other, device="cpu")
    assert "\n" not in str(e.value)
    (other / "export.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid export manifest"):
        load_package(other, device="cpu")


def test_corrupt_package_gives_one_clear_line(pk, tmp_path):
    _, dirs = pk
    bad = tmp_path / "step"
    shutil.copytree(dirs[0], bad)
    data = (bad / "step_f3.pt2").read_bytes()
    (bad / "step_f3.pt2").write_bytes(data[: len(data) // 3])  # truncated, as an interrupted copy
    with pytest.raises(ValueError, match=r"step_f3.pt2 is corrupt or not an AOTInductor package") as e:
        load_package(bad, device="cpu")
    assert "\n" not in str(e.value)


def _export_cli(argv: list[str]) -> int:
    """`arvid export aoti ...` through the registrar (the `arvid export` group hooks in register_aoti)."""
    import argparse

    from arvid.commands.export_aoti import register_aoti

    parser = argparse.ArgumentParser(prog="arvid export")
    register_aoti(parser.add_subparsers(dest="format", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # as arvid.cli.main reports bad input
        print(f"arvid export: error: {e}", file=sys.stderr)
        return 2


def test_cli_export_aoti_reuses_and_refuses_bad_flags(pk, capsys):
    _, dirs = pk
    t0 = time.perf_counter()
    # Same model (tiny, seed 0), graph and settings as the session's packages: the key matches.
    assert _export_cli(["aoti", "--preset", "tiny", "--graph", "step", "--out", str(dirs[0])]) == 0
    assert time.perf_counter() - t0 < 30
    assert "step_f3.pt2, weights.safetensors + export.json" in capsys.readouterr().out
    rc = _export_cli(["aoti", "--graph", "step", "--recache-frames", "9", "--out", str(dirs[0])])
    assert rc == 2
    assert "--recache-frames only applies to --graph recache" in capsys.readouterr().err


@pytest.mark.parametrize("global_sink", [True, False])
def test_aoti_executor_in_generate_matches_eager(pk, global_sink):
    """`StreamingGenerator(..., backend="aoti")`: 36 frames, switches at 3, 12 and 24 through the
    exported re-cache graphs, equal to the eager baseline within 1e-5."""
    import check_parity as cp

    from arvid.runtime import StreamingGenerator

    model, dirs = pk
    inputs = cp.parity_inputs(model)
    want = cp.reference(model, inputs, global_sink)
    gen = StreamingGenerator(
        model, StreamConfig(global_sink=global_sink), latent_size=(8, 8), backend="aoti",
        engine_options={"package_dirs": dirs},
    )  # fmt: skip
    got = gen.generate(inputs["noise"], list(inputs["_prompts"]), cp.SWITCHES, renoise=inputs["renoise"])
    assert (got - want).abs().max().item() <= 1e-5


def test_aoti_executor_refuses_what_it_cannot_run(pk):
    from arvid.runtime import StreamingGenerator

    model, dirs = pk
    with pytest.raises(ValueError, match="aoti\\+graphs captures CUDA graphs: it needs a CUDA device"):
        StreamingGenerator(model, StreamConfig(), latent_size=(8, 8), backend="aoti", engine_flags={"graphs"},
                           engine_options={"package_dirs": dirs})  # fmt: skip
    with pytest.raises(ValueError, match="needs a chunk package"):
        StreamingGenerator(model, StreamConfig(), latent_size=(8, 8), backend="aoti", engine_flags={"chunk"},
                           engine_options={"package_dirs": dirs})  # fmt: skip
    with pytest.raises(ValueError, match="manifest latent_size is"):
        StreamingGenerator(model, StreamConfig(), latent_size=(8, 16), backend="aoti",
                           engine_options={"package_dirs": dirs})  # fmt: skip
