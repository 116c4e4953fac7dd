"""Packaging: the top-level folders install as ``arvid.<folder>`` through ``package_dir``."""

from pathlib import Path

from setuptools import setup

LAYERS = ["kernels", "runtime", "quant", "export", "bench"]

setup(
    name="arvid",
    version="0.1.0",
    description="Inference toolkit for streaming autoregressive video diffusion (LongLive, Self-Forcing, CausVid)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["arvid", "arvid.commands"] + [f"arvid.{layer}" for layer in LAYERS],
    package_dir={"arvid": "arvid", **{f"arvid.{layer}": layer for layer in LAYERS}},
    # No upper bound and no CUDA index: a CUDA torch already installed is left alone, and
    # on a CPU machine the README installs torch==2.13.0 (the local CPU wheel) first.
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors",
        "psutil",
        "tqdm",
        "pyyaml>=6",  # --config run.yaml (LongLive's inference YAML)
        "transformers>=4.56",  # umT5 text encoder
        "diffusers>=0.35",  # Wan VAE (streaming decode)
        "av>=14",  # PyAV: mp4 output
        "Pillow",
        "matplotlib",  # bench / quality plots
    ],
    extras_require={
        "triton": ["triton>=3.2"],
        "quant": ["torchao>=0.18"],
        "modelopt": ["nvidia-modelopt>=0.47"],
        # ONNX export, the TensorRT-readiness check and the ONNX Runtime engine (CPU packages;
        # on a GPU machine install onnxruntime-gpu instead of onnxruntime for the CUDA provider)
        "export": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.3"],
        "dev": [
            "pytest>=8",
            "pytest-benchmark",
            "ruff",
            "peft>=0.13",  # tests: LoRA merge vs the unmerged adapter
            "torchao>=0.18",
            "nvidia-modelopt>=0.47",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "onnxscript>=0.3",
            "setuptools>=70.1",  # builds wheels without the separate `wheel` package (tests/test_cli.py)
            "triton>=3.2; platform_system == 'Linux'",
        ],
    },
    entry_points={"console_scripts": ["arvid = arvid.cli:main"]},
)
