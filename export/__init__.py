"""Export of the chunk step: graphs with declared I/O (``graphs``), and the artifacts built from them.

Imports point down to ``arvid.runtime`` (and ``arvid.quant`` for Q/DQ calibration) only. The engines
``ort`` and ``trt`` (ONNX Runtime, TensorRT; ``executors.py``) and ``aoti`` (AOTInductor packages,
``aoti.py``) are registered with the runtime by name (``arvid/runtime/executors.py``) and imported
on their first use, so ``StreamingGenerator(..., backend="ort")`` and variants such as ``aoti+chunk``
resolve without importing this package first. Heavy dependencies (onnx, onnxruntime, tensorrt) are
imported only when an artifact is built or run.
"""

if __name__ != "arvid.export":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
