"""The causal Wan2.1 DiT, with original Wan parameter names.

Shapes: latents ``x`` are ``[B, F, C, H, W]`` (frame-major, as the streaming runtime keeps
them), timesteps ``t`` are per frame ``[B, F]``, so every frame gets its own adaLN modulation.
Self-attention hands its raw q/k/v, its q/k norm weights (:class:`~arvid.runtime.rope.QKNorm`)
and the forward's RoPE input to a KV cache (``kv_cache.py``), which normalises, rotates, stores and
attends; with no cache the model runs full (global) attention over its own tokens, as the
bidirectional Wan does. The model owns the one RoPE table (:class:`~arvid.runtime.rope.RopeTables`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arvid.kernels.qk_norm_rope_append import rms_norm_ref

from .checkpoint import state_dict_mismatch
from .config import ModelConfig
from .kv_cache import KVCache
from .rope import QKNorm, RopeInput, RopeTables, qk_norm_rope


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding ``[..., dim]``: ``[cos | sin]`` of ``t * 10000**(-i/half)``, computed in
    float64 and rounded once to float32 (exported graphs take it as an input: no float64 inside)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = t.to(torch.float64)[..., None] * freqs
    return torch.cat([arg.cos(), arg.sin()], dim=-1).float()


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_ref(x, self.weight, self.eps)


class WanSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.eps = cfg.num_heads, cfg.head_dim, cfg.eps
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = WanRMSNorm(cfg.dim, cfg.eps)
        self.norm_k = WanRMSNorm(cfg.dim, cfg.eps)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw projections ``[B, L, H, D]`` (before RMSNorm and RoPE: the cache applies those)."""
        shape = (*x.shape[:2], self.num_heads, self.head_dim)
        return self.q(x).view(shape), self.k(x).view(shape), self.v(x).view(shape)

    @property
    def qk_norm(self) -> QKNorm:
        return QKNorm(self.norm_q.weight, self.norm_k.weight, self.eps)

    def forward(self, x: torch.Tensor, layer: int, rope: RopeInput, cache: KVCache | None, plan: Any) -> torch.Tensor:
        q, k, v = self.qkv(x)
        if cache is None:  # full-sequence forward: global attention over the tokens given
            q, k = qk_norm_rope(q, k, self.qk_norm, rope)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out.transpose(1, 2)
        else:
            out = cache.self_attention(layer, q, k, v, self.qk_norm, rope, plan)
        return self.o(out.flatten(2))


class WanCrossAttention(nn.Module):
    """Attention over the text tokens; padding tokens are deliberately not masked (as in Wan)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = WanRMSNorm(cfg.dim, cfg.eps)
        self.norm_k = WanRMSNorm(cfg.dim, cfg.eps)

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the embedded text ``[B, Lt, dim]`` -> two ``[B, H, Lt, D]``; computed once per prompt."""
        shape = (*context.shape[:2], self.num_heads, self.head_dim)
        k = self.norm_k(self.k(context)).view(shape).transpose(1, 2)
        v = self.v(context).view(shape).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x)).view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *text_kv)
        return self.o(out.transpose(1, 2).flatten(2))


class WanFFN(nn.Sequential):
    """Linear -> tanh-GELU -> Linear, parameters ``ffn.0`` / ``ffn.2`` as in Wan checkpoints.

    The forward is written here rather than inherited: Dynamo does not trace ``nn.Sequential.forward``
    (torch.nn's own code), so ``nn.Sequential.compile()`` compiled nothing and the FFN, about 2/3 of
    a block's linear FLOPs, ran eagerly under ``+compile``.
    """

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](self[1](self[0](x)))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = WanFFN(cfg.dim, cfg.ffn_dim)
        # in place: an out-of-place op on the meta device (build_model) imports torch._dynamo, seconds of start-up
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim).div_(cfg.dim**0.5))

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        frames: int,
        rope: RopeInput,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None,
        plan: Any,
    ) -> torch.Tensor:
        """``x`` ``[B, L, dim]`` float32 residual stream; ``e`` ``[B, F, 6, dim]`` float32 per-frame modulation."""
        b, n, d = x.shape
        wdtype = self.modulation.dtype  # model dtype; reading a quantized Linear's weight would dequantize it
        mod = (self.modulation.float().unsqueeze(1) + e).unbind(2)  # 6 x [B, F, dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.unsqueeze(2) for m in mod)  # [B, F, 1, dim]

        def per_frame(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, frames, n // frames, d)

        h = per_frame(self.norm1(x)) * (1 + scale1) + shift1
        y = self.self_attn(h.view(b, n, d).to(wdtype), self.layer, rope, cache, plan)
        x = (per_frame(x) + per_frame(y.float()) * gate1).view(b, n, d)
        x = x + self.cross_attn(self.norm3(x.to(wdtype)), text_kv).float()
        h = per_frame(self.norm2(x)) * (1 + scale2) + shift2
        y = self.ffn(h.view(b, n, d).to(wdtype))
        return (per_frame(x) + per_frame(y.float()) * gate2).view(b, n, d)


class WanHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim).div_(cfg.dim**0.5))  # in place: see above

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """``x`` ``[B, L, dim]``, ``e`` ``[B, F, dim]`` (the time embedding before projection)."""
        b, n, d = x.shape
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).unbind(2)  # [B, F, dim]
        h = self.norm(x).view(b, frames, n // frames, d) * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
        return self.head(h.view(b, n, d).to(self.modulation.dtype))


class CausalWanModel(nn.Module):
    """Wan2.1 text-to-video DiT run causally, chunk by chunk, over a KV cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg, i) for i in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self._rope: RopeTables | None = None

    # -- helpers -----------------------------------------------------------------------------
    def compile_regions(self, **compile_kwargs) -> CausalWanModel:
        """Regional ``torch.compile`` of the parts between the attention kernels, in place.

        Each block's FFN and cross-attention are compiled (``nn.Module.compile``: parameter names
        and the state dict are unchanged). The self-attention stays eager: it calls the cache,
        whose backend owns the kernels. Compilation happens at the first call, so run a warm-up
        before any CUDA-graph capture (ChunkRunner does). One compiled graph serves all 30
        blocks of the same shape, which keeps the warm-up short.
        """
        for block in self.blocks:
            block.ffn.compile(**compile_kwargs)
            block.cross_attn.compile(**compile_kwargs)
        self.regions_compiled = True
        self._warmed: set[tuple[int, int]] = set()
        return self

    @torch.no_grad()
    def warm_compiled_regions(self, token_counts: Iterable[int], batch_size: int = 1) -> None:
        """Run every compiled region once per forward length in ``token_counts`` (tokens per forward).

        A prompt switch re-runs 9 or 12 frames through regions first compiled at a 3-frame chunk:
        without this, Dynamo recompiles there, inside a timed chunk or a live stream. Runs under
        ``no_grad`` as the generator does (Dynamo guards on it); lengths done before are skipped.
        """
        if not getattr(self, "regions_compiled", False):
            return
        p = self.patch_embedding.weight
        wdtype = self.blocks[0].modulation.dtype
        todo = [n for n in dict.fromkeys(token_counts) if (n, batch_size) not in self._warmed]
        if not todo:
            return
        text = torch.zeros(batch_size, self.cfg.text_len, self.cfg.text_dim, device=p.device, dtype=p.dtype)
        text_kv = self.text_kv(text)  # the real K/V path: same dtype and strides as a stream's
        for n in todo:
            x = torch.zeros(batch_size, n, self.cfg.dim, device=p.device, dtype=wdtype)
            for block, kv in zip(self.blocks, text_kv, strict=True):
                block.cross_attn(x, kv)
                block.ffn(x)
            self._warmed.add((n, batch_size))

    @property
    def rope(self) -> RopeTables:
        """The model's RoPE tables (the one owner), on the model's device."""
        device = self.patch_embedding.weight.device
        if self._rope is None:
            self._rope = RopeTables(self.cfg.head_dim, self.cfg.rope_max_positions, device)
        else:
            self._rope.ensure(0, device)
        return self._rope

    def rope_tables(self, min_positions: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin tables ``[P, D/2]``, P grown (doubling from ``cfg.rope_max_positions``, Wan's
        1024) to cover ``min_positions``: frame positions are absolute, so a long stream needs a long table."""
        rope = self.rope
        rope.ensure(min_positions)
        return rope.cos, rope.sin

    def grid_sizes(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.cfg.patch_size
        return frames // pt, height // ph, width // pw

    def text_kv(self, text_embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V for a prompt ``[B, text_len, text_dim]``: the cross-attention cache."""
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != self.cfg.text_dim:
            raise ValueError(
                f"text embeddings must be [B, text_len, {self.cfg.text_dim}], got {tuple(text_embeds.shape)}"
            )
        context = self.text_embedding(text_embeds.to(self.patch_embedding.weight.dtype))
        return [block.cross_attn.text_kv(context) for block in self.blocks]

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]],
        *,
        frame_offset: int | torch.Tensor = 0,
        cache: KVCache | None = None,
        plan: Any = None,
        t_freq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow ``noise - x0``.

        Parameters
        ----------
        x : ``[B, F, C, H, W]`` latents of F consecutive latent frames, the first at absolute
            latent frame ``frame_offset`` (the RoPE frame position: a host int or an int32 device
            scalar ``[1]``).
        t : ``[B, F]`` timesteps in [0, 1000], one per frame; or ``None`` with ``t_freq``.
        t_freq : ``[B, F, freq_dim]`` float32, the sinusoidal embedding of ``t`` computed beforehand
            (:func:`sinusoidal_embedding`, float64 inside): exported graphs take it as an input.
        text : ``[B, text_len, text_dim]`` prompt embeddings, or the cross-attention cache
            from :meth:`text_kv`.
        cache, plan : the self-attention KV cache and its host-side plan for this forward;
            ``None`` runs full attention over the given frames.

        Returns
        -------
        ``[B, F, C_out, H, W]`` float32.
        """
        cfg = self.cfg
        b, f, c, h, w = x.shape
        if c != cfg.in_dim:
            raise ValueError(f"latents have {c} channels, the model takes {cfg.in_dim}")
        if h % cfg.patch_size[1] or w % cfg.patch_size[2]:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {cfg.patch_size[1:]}")
        if t_freq is None:
            if t is None or t.shape != (b, f):
                raise ValueError(f"timesteps must be [B, F] = {(b, f)}, got {None if t is None else tuple(t.shape)}")
            t_freq = sinusoidal_embedding(cfg.freq_dim, t)
        elif t_freq.shape != (b, f, cfg.freq_dim):
            raise ValueError(f"t_freq must be [B, F, freq_dim] = {(b, f, cfg.freq_dim)}, got {tuple(t_freq.shape)}")
        text_kv = self.text_kv(text) if isinstance(text, torch.Tensor) else text
        wdtype = self.patch_embedding.weight.dtype

        grid = self.grid_sizes(f, h, w)
        tokens = self.patch_embedding(x.to(wdtype).transpose(1, 2))  # [B, dim, F, Hp, Wp]
        tokens = tokens.flatten(2).transpose(1, 2).float()  # [B, L, dim] residual stream in float32

        # Time embedding per frame; the block modulation is per frame too.
        temb = self.time_embedding(t_freq.reshape(b * f, cfg.freq_dim).to(wdtype)).float()  # [B*F, dim]
        e = self.time_projection(temb.to(wdtype)).float().view(b, f, 6, cfg.dim)
        rope = RopeInput(self.rope.cos_sin, grid, frame_offset)
        temb, frames = temb.view(b, f, cfg.dim), f
        # Sequence parallel (runtime/parallel.py): the cache says so; the blocks run on this rank's
        # tokens with the modulation per token (one "frame" per token), the head's output is gathered.
        sp = getattr(cache, "sequence_parallel", None)
        if sp is not None:
            tokens, e, temb = sp.split_tokens(tokens, e, temb, grid[1] * grid[2])
            frames = tokens.shape[1]

        for block, kv in zip(self.blocks, text_kv, strict=True):
            tokens = block(tokens, e, frames, rope, kv, cache, plan)

        out = self.head(tokens, temb, frames).float()  # [B, L, C_out * prod(patch)]
        if sp is not None:
            out = sp.gather_tokens(out)
        return self.unpatchify(out, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        f, hp, wp = grid
        x = x.view(x.shape[0], f, hp, wp, pt, ph, pw, self.cfg.out_dim)
        x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # [B, f, pt, C, hp, ph, wp, pw]
        return x.reshape(x.shape[0], f * pt, self.cfg.out_dim, hp * ph, wp * pw)


def init_random_weights(model: CausalWanModel, seed: int = 0) -> CausalWanModel:
    """Deterministic random weights, drawn on the CPU in float32 so every device and dtype gets the
    same values (speed does not depend on the weights; tests rely on the determinism)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                vals = torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
            elif name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm3.weight"):
                vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                vals = 0.02 * torch.randn(p.shape, generator=gen)
            else:  # fan-in scaled weights keep activations O(1) through the layers
                fan_in = math.prod(p.shape[1:])
                vals = torch.randn(p.shape, generator=gen) / fan_in**0.5
            p.copy_(vals)
    return model


def build_model(
    cfg: ModelConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    state_dict: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> CausalWanModel:
    """Build on the meta device, then materialise once: from ``state_dict`` (``assign=True``) or random."""
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    if state_dict is not None:
        problems = state_dict_mismatch(model.state_dict(), state_dict)
        if problems:
            raise ValueError("checkpoint does not match the model:" + "".join(f"\n  {p}" for p in problems))
        sd = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        model.load_state_dict(sd, assign=True)
    else:
        model.to(dtype=dtype).to_empty(device=device)  # one allocation, straight in the target dtype
        init_random_weights(model, seed)
    return model.eval().requires_grad_(False)
