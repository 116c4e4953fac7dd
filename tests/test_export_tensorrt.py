"""export/tensorrt.py. TensorRT installs on no machine of this project: a fake ``tensorrt`` module
records which documented calls ``build_engine`` makes for TensorRT 10 and 11; the real build and
the engine runner are tested where TensorRT and CUDA exist (skipped otherwise)."""

import enum
import sys
import types

import pytest
import torch

from arvid.export import tensorrt as trtmod


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []


def _fake_trt(version: str, rec: _Recorder, *, parse_ok: bool = True):
    m = types.ModuleType("tensorrt")
    m.__version__ = version

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level) -> None:
            rec.calls.append(("Logger", level))

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 5

    class BuilderFlag(enum.Enum):  # TensorRT 11 has no FP16/INT8/FP8 flags: the fake has none either
        REFIT = "REFIT"

    class MemoryPoolType(enum.Enum):
        WORKSPACE = "WORKSPACE"

    class Blob:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self):
            return self.data

        def __buffer__(self, flags):
            return memoryview(self.data)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            rec.calls.append(("set_flag", flag))

        def create_timing_cache(self, blob):
            rec.calls.append(("create_timing_cache", blob))
            return Blob(blob + b"+timed")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return memoryview(b"PLAN")

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (importFoo): UNSUPPORTED_NODE"

    m.Logger, m.Builder, m.OnnxParser = Logger, Builder, OnnxParser
    m.NetworkDefinitionCreationFlag, m.BuilderFlag, m.MemoryPoolType = (
        NetworkDefinitionCreationFlag,
        BuilderFlag,
        MemoryPoolType,
    )
    return m


@pytest.mark.parametrize("version", ["10.8.0", "11.0.0"])
def test_build_engine_api_per_version(tmp_path, monkeypatch, version):
    rec = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(version, rec))
    (tmp_path / "g.onnx").write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    res = trtmod.build_engine(
        tmp_path / "g.onnx", tmp_path / "g.plan", timing_cache=cache, refit=True, workspace=1 << 20
    )
    assert (tmp_path / "g.plan").read_bytes() == b"PLAN" and res["plan_bytes"] == 4
    assert cache.read_bytes() == b"+timed"  # written back after the build
    net = next(c for c in rec.calls if c[0] == "create_network")
    assert net[1] == (1 << 5 if version.startswith("10") else 0)  # STRONGLY_TYPED on 10, implicit on 11
    flags = [c[1].name for c in rec.calls if c[0] == "set_flag"]
    assert flags == ["REFIT"]  # never a precision flag
    assert ("set_memory_pool_limit", sys.modules["tensorrt"].MemoryPoolType.WORKSPACE, 1 << 20) in rec.calls
    assert res["strongly_typed"] and res["tensorrt"] == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.plan", "timing.cache"]


def test_parser_errors_and_versions(tmp_path, monkeypatch):
    (tmp_path / "g.onnx").write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.3.0", _Recorder(), parse_ok=False))
    with pytest.raises(ValueError, match="ONNX parser failed: In node 3"):
        trtmod.build_engine(tmp_path / "g.onnx", tmp_path / "g.plan")
    assert not (tmp_path / "g.plan").exists()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("8.6.1", _Recorder()))
    with pytest.raises(ValueError, match=r"TensorRT 8\.6\.1 is not supported"):
        trtmod.build_engine(tmp_path / "g.onnx", tmp_path / "g.plan")


def test_missing_tensorrt_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match="TensorRT is not installed") as e:
        trtmod.build_engine(tmp_path / "g.onnx", tmp_path / "g.plan")
    assert "\n" not in str(e.value)


@pytest.mark.gpu
def test_real_engine_matches_ort(tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("onnx")
    from torch import nn

    from arvid.export.onnx_export import export_onnx

    mod = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).cuda().eval()
    x = torch.randn(4, 8, device="cuda")
    export_onnx(mod, (x,), {"inputs": [{"name": "x"}], "outputs": [{"name": "y"}]}, tmp_path / "m.onnx", parity=False)
    trtmod.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan")
    eng = trtmod.TrtEngine(tmp_path / "m.plan")
    (y,) = eng(x)
    torch.cuda.synchronize()
    with torch.no_grad():
        torch.testing.assert_close(y, mod(x), atol=1e-2, rtol=1e-2)  # TF32 tactics allowed on fp32
    eng2 = trtmod.TrtEngine(tmp_path / "m.plan")
    eng2.capture([x])
    x.copy_(torch.randn_like(x))
    (y2,) = eng2.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        torch.testing.assert_close(y2, mod(x), atol=1e-2, rtol=1e-2)


# -- the `trt` engine ---------------------------------------------------------------------------
def _tiny():
    from arvid.runtime import build_model, get_preset

    return build_model(get_preset("tiny").model, seed=0)


def _needs_what() -> list[str]:
    out = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        out.append("tensorrt is not installed")
    if not torch.cuda.is_available():
        out.append("it needs CUDA")
    return out


def test_trt_engine_is_registered():
    # registered by name in the runtime: no import of arvid.export needed (it is imported on first use)
    from arvid.runtime.executors import get_executor

    ex = get_executor("trt")
    assert ex is not None and set(ex.flags) == {"int8", "fp8", "chunk"}
    assert ex.factory == "arvid.export.executors:trt_executor" and callable(ex.load())


def test_trt_engine_refuses_in_one_line_without_tensorrt_or_cuda():
    from arvid.runtime import StreamingGenerator

    missing = _needs_what()
    if not missing:
        pytest.skip("TensorRT and CUDA are both here")
    with pytest.raises(ValueError, match="engine 'trt' cannot run here") as e:
        StreamingGenerator(_tiny(), latent_size=(8, 8), backend="trt")
    assert "\n" not in str(e.value)
    for what in missing:
        assert what in str(e.value)


def test_trt_engine_with_tensorrt_but_no_cuda_names_cuda(monkeypatch):
    from arvid.runtime import StreamingGenerator

    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.3.0", _Recorder()))
    with pytest.raises(ValueError, match=r"cannot run here: it needs CUDA \(the model is on cpu") as e:
        StreamingGenerator(_tiny(), latent_size=(8, 8), backend="trt")
    assert "tensorrt is not installed" not in str(e.value)


def test_bench_with_trt_fails_in_one_line(capsys):
    from arvid.cli import main

    if not _needs_what():
        pytest.skip("TensorRT and CUDA are both here")
    assert main(["bench", "--preset", "tiny", "--backends", "eager,trt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]  # bench's progress line aside
    assert len(errors) == 1 and errors[0].startswith("arvid bench: error: engine 'trt' cannot run here")


@pytest.mark.gpu
def test_real_trt_engine_in_generate_matches_eager(tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("onnx")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from arvid.runtime import StreamConfig, StreamingGenerator

    model = _tiny().cuda()
    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    noise = torch.randn(1, 6, cfg.in_dim, 8, 8, generator=g).cuda()
    prompt = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).cuda()
    renoise = torch.randn(2, 4, 1, 3, cfg.in_dim, 8, 8, generator=g).cuda()  # [chunk, step, B, F, C, H, W]

    def rn(ci, si):
        return renoise[ci, si]

    want = StreamingGenerator(model, StreamConfig(), latent_size=(8, 8)).generate(noise, [prompt], renoise=rn)
    gen = StreamingGenerator(model, StreamConfig(), latent_size=(8, 8), backend="trt",
                             engine_options={"out_dir": str(tmp_path)})  # fmt: skip
    got = gen.generate(noise, [prompt], renoise=rn)
    assert (got.float() - want.float()).abs().max().item() < 1e-2  # TF32 tactics on fp32
