"""arvid: inference toolkit for streaming, autoregressive video diffusion models.

The layers install as subpackages and import only downwards:
``arvid.kernels`` <- ``arvid.runtime`` <- ``arvid.quant``, ``arvid.export`` <- ``arvid.bench``
<- ``arvid.cli`` (the ``arvid`` command).
"""

__version__ = "0.1.0"
