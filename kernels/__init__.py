"""Triton kernels for streaming attention off a ring-buffer KV cache, each beside its PyTorch reference.

Public entry points live in the op modules (``sink_window_attention``, ``qk_norm_rope_append``,
``rope_3d``); the bundles they take (one layer's cache, the plan's device scalars, the RoPE tables)
in ``layouts``; the availability checks callers need before choosing a Triton path are here.
"""

if __name__ != "arvid.kernels":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
else:
    from ._triton_utils import has_sm89, triton_unavailable_reason
    from ._triton_utils import interpreting as triton_interpreting

    __all__ = ["has_sm89", "triton_interpreting", "triton_unavailable_reason"]
