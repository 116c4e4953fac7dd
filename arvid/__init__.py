"""arvid: inference toolkit for streaming, autoregressive video diffusion models.

The layers install as subpackages and import only downwards:
``arvid.kernels`` <- ``arvid.runtime`` <- ``arvid.quant``, ``arvid.export`` <- ``arvid.bench``
<- ``arvid.cli`` (the ``arvid`` command).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from arvid import Pipeline` imports torch only when asked for: `import arvid` stays light.
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'arvid' has no attribute {name!r}")
