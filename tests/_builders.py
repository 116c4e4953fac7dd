"""Models the tests build more than once."""

import diffusers
import torch


def diffusers_wan_transformer(cfg, *, randomize: bool = False):
    """diffusers' ``WanTransformer3DModel`` with the sizes of an arvid ``ModelConfig`` (seeded).

    ``randomize`` draws every parameter at random: diffusers initialises biases and norms to
    constants, behind which a swapped or dropped weight could hide in a parity test.
    """
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    ).eval()
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() <= 1 else 1.0 / max(p[0].numel(), 1) ** 0.5))
    return model
