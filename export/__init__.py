"""Export of the chunk step: graphs with declared I/O (``graphs``), and the artifacts built from them.

Imports point down to ``arvid.runtime`` (and ``arvid.quant`` for Q/DQ calibration) only. Importing
this package registers the engines as chunk executors of the runtime (``arvid.runtime.register_executor``):
``ort`` and ``trt`` (ONNX Runtime, TensorRT; ``executors.py``) and ``aoti`` (AOTInductor packages, ``aoti.py``), so
``StreamingGenerator(..., backend="ort")`` and variants such as ``aoti+chunk`` resolve. Heavy
dependencies (onnx, onnxruntime, tensorrt) are imported only when an artifact is built or run.
"""

if __name__ != "arvid.export":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
else:
    from . import aoti, executors  # noqa: F401  (registration)
