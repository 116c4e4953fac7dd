"""The names of what ``arvid export`` makes, in one torch-free home: the graph kinds and the Q/DQ schemes.

Torch-free (standard library only) so that the command line's parser (``arvid --help`` starts without
torch) can offer them without a copy; every exporter (``graphs``, ``artifacts``, ``aoti``) reads them here.
"""

from __future__ import annotations

# graphs of the DiT's chunk step (arvid.export.graphs): every exporter, ONNX and AOTInductor alike
DIT_GRAPH_KINDS = ("step", "chunk", "recache")
# and the streaming VAE decoder step, which only the ONNX export makes (arvid.export.vae_graph)
GRAPH_KINDS = (*DIT_GRAPH_KINDS, "vae-step")
# Q/DQ ONNX schemes calibrated with nvidia-modelopt (arvid.export.qdq)
QUANT_SCHEMES = ("int8-smoothquant", "fp8")
