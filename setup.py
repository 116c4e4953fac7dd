"""Packaging: the top-level folders install as ``arvid.<folder>`` through ``package_dir``."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# one home for the version: arvid/__init__.py (read as text: importing arvid here would need its dependencies)
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "arvid" / "__init__.py").read_text(encoding="utf-8"), re.M)[1]

LAYERS = ["kernels", "runtime", "quant", "export", "bench"]

# The core runs `bench`, `roofline`, `report` (tables, JSON) and StreamingGenerator; everything else is an
# extra, imported only where it is used (arvid.runtime.optional.require names the extra to install).
CORE = [
    "torch>=2.11",
    "numpy",
    "safetensors",
    "psutil",
    "tqdm",
    "pyyaml>=6",  # --config YAML files (runtime/config_file.py)
]

EXTRAS = {
    # the umT5 text encoder (transformers; `dtype=` in from_pretrained is new in 4.56), the streaming
    # Wan VAE (diffusers' AutoencoderKLWan), mp4 output (PyAV) and PNG frames (Pillow)
    # diffusers < 0.43: runtime/vae.py and export/vae_graph.py drive AutoencoderKLWan's private streaming
    # internals (`_feat_map`, `decoder(x, feat_cache=..., feat_idx=...)`), tested with 0.42.1 only
    "video": ["transformers>=4.56", "diffusers>=0.35,<0.43", "av>=14", "Pillow"],
    "plots": ["matplotlib"],  # `arvid report --plots`, the quality report's plots
    "hub": ["huggingface_hub>=0.23"],  # `arvid download` (snapshot_download(local_dir=...))
    # torchao 0.18's compiled kernels are built for torch >= 2.11 (older torch: "Failed to load" and
    # no kernels), so the extra raises the floor; it never admits a newer torch than the core does
    "quant": ["torchao>=0.18", "torch>=2.11"],
    # Q/DQ calibration (modelopt 0.47 itself needs torch >= 2.8). < 0.48: export/qdq.py rewrites the
    # `trt::TRT_FP8{Quantize,Dequantize}Linear` nodes its TorchScript export emits, a form of 0.47's own
    "modelopt": ["nvidia-modelopt>=0.47,<0.48"],
    # ONNX export, the TensorRT-readiness check and the ONNX Runtime engine (CPU packages; on a GPU
    # machine install onnxruntime-gpu instead of onnxruntime for the CUDA provider)
    # (onnx-ir: the exported graph stays its model, written tensor by tensor as external data; 1.1 has the
    # passes and the save callback export/onnx_export.py uses)
    "export": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.3", "onnx-ir>=1.1"],
    # the Triton kernels (Linux GPU machines; CUDA builds of torch already bring triton)
    "triton": ["triton>=3.6; platform_system == 'Linux'"],
    # `arvid serve`: WebRTC (aiortc, on asyncio), its HTTP side (aiohttp: aiortc's own server framework,
    # see arvid/serve/app.py), /metrics (prometheus-client)
    "serve": ["aiortc>=1.9", "aiohttp>=3.9", "prometheus-client>=0.20"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# the test suite runs every path on the CPU (Triton under TRITON_INTERPRET=1, ONNX Runtime, modelopt),
# so it needs every extra and the test tools
EXTRAS["dev"] = EXTRAS["all"] + [
    "pytest>=8",
    "pytest-benchmark",
    "ruff",
    "peft>=0.13",  # tests: LoRA merge vs the unmerged adapter
    "setuptools>=70.1",  # builds wheels without the separate `wheel` package (tests/test_cli.py)
    "selenium>=4.11",  # tests/test_serve.py drives Debian's chromium (Service takes the driver's path)
]

setup(
    name="arvid",
    version=VERSION,
    description="Inference toolkit for streaming autoregressive video diffusion (LongLive, Self-Forcing, CausVid)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["arvid", "arvid.commands", "arvid.serve"] + [f"arvid.{layer}" for layer in LAYERS],
    package_data={"arvid.serve": ["static/*"]},  # the page at / (plain HTML + JavaScript, no build step)
    package_dir={"arvid": "arvid", **{f"arvid.{layer}": layer for layer in LAYERS}},
    # No upper bound and no CUDA index: a CUDA torch already installed is left alone, and on a CPU
    # machine the README installs torch==2.13.0 (the CPU wheel) in the same pip command.
    # The floors are what is tested, nothing older: torch 2.13 / triton 3.9 on the CPU machines and in
    # CI, torch 2.11 / triton 3.6 on the GPU image (bench/run_gpu_suite.sh runs the quick CPU tests
    # there in its compat stage). Older releases may lack what arvid calls (torch 2.13 added
    # dist.all_gather_single, which arvid therefore does not use).
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["arvid = arvid.cli:main"]},
)
