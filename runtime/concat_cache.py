"""The eager baseline's cache: the streaming algorithm written the way the reference implementation does it.

Each layer keeps K/V in temporal order (sink first, then the window oldest to newest) with a
global and a local end index. When a new chunk does not fit, the window is rolled left by
copying; before every attention call the layer's sink and window are cloned and concatenated;
one attention call per layer, no fusion, no graphs. It gives the same results as the ring
buffer (attention does not depend on key order), at the cost of the copies. Every benchmark
runs it in the same process as the variants it compares, on the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ModelConfig, StreamConfig
from .devices import check_fits
from .rope import qk_norm_rope


@dataclass
class BaselinePlan:
    frame_start: int
    num_frames: int
    kind: str = "chunk"  # "chunk" | "recache" | "recache_keep_sink"

    @property
    def frame_offset(self) -> int:
        """RoPE frame position of the first query frame (a host int: the baseline is not capturable)."""
        return self.frame_start


class ConcatKVCache:
    def __init__(
        self,
        model_cfg: ModelConfig,
        stream_cfg: StreamConfig,
        *,
        batch_size: int,
        tokens_per_frame: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.stream = stream_cfg
        self.tokens_per_frame = tokens_per_frame
        self.capacity = stream_cfg.attention_frames * tokens_per_frame
        self.sink_tokens = stream_cfg.sink_frames * tokens_per_frame
        shape = (batch_size, self.capacity, model_cfg.num_heads, model_cfg.head_dim)
        check_fits(
            2 * model_cfg.num_layers * math.prod(shape) * dtype.itemsize,
            device,
            f"the KV cache (batch {batch_size}, {self.capacity:,} tokens x {model_cfg.num_layers} layers)",
        )
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.num_layers)]
        self.global_end = [0] * model_cfg.num_layers
        self.local_end = [0] * model_cfg.num_layers

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def reset(self) -> None:
        self.global_end = [0] * len(self.k)
        self.local_end = [0] * len(self.k)

    def plan_chunk(self, frame_start: int) -> BaselinePlan:
        return BaselinePlan(frame_start, self.stream.chunk_frames)

    def plan_recache(self, switch_frame: int) -> BaselinePlan:
        cfg = self.stream
        n = min(cfg.attention_frames, switch_frame)
        start = switch_frame - n
        if start == 0 or not cfg.global_sink:
            # Clear the cache; the re-run frames are written from slot 0 as the reference does.
            self.global_end = [start * self.tokens_per_frame] * len(self.k)
            self.local_end = [0] * len(self.k)
            return BaselinePlan(start, n, "recache")
        return BaselinePlan(start, n, "recache_keep_sink")

    def activate(self, plan: BaselinePlan) -> None:
        pass  # host-side indices only: the baseline is not capturable, by design

    def commit(self, plan: BaselinePlan) -> None:
        pass  # the reference keeps its indices per layer, updated inside the attention call

    def self_attention(self, layer: int, q, k, v, norm, rope, plan: BaselinePlan) -> torch.Tensor:
        q, k = qk_norm_rope(q, k, norm, rope)
        kc, vc = self.k[layer], self.v[layer]
        new = k.shape[1]
        current_end = (plan.frame_start + plan.num_frames) * self.tokens_per_frame
        if plan.kind == "recache_keep_sink":
            # The sink keeps its K/V; the window is rebuilt from the last re-run frames.
            keep = self.capacity - self.sink_tokens
            kc[:, self.sink_tokens :] = k[:, new - keep :]
            vc[:, self.sink_tokens :] = v[:, new - keep :]
            local_end = self.capacity
        else:
            local_end = self.local_end[layer] + current_end - self.global_end[layer]
            if current_end > self.global_end[layer] and local_end > self.capacity:
                # Evict the oldest window tokens by rolling the window left (a copy, as the reference does).
                evicted = local_end - self.capacity
                rolled = self.local_end[layer] - evicted - self.sink_tokens
                src = slice(self.sink_tokens + evicted, self.sink_tokens + evicted + rolled)
                dst = slice(self.sink_tokens, self.sink_tokens + rolled)
                kc[:, dst] = kc[:, src].clone()
                vc[:, dst] = vc[:, src].clone()
                local_end -= evicted
            kc[:, local_end - new : local_end] = k
            vc[:, local_end - new : local_end] = v
        self.global_end[layer] = current_end
        self.local_end[layer] = local_end

        # Clone + concatenate the sink and the window before the attention call.
        sink = min(self.sink_tokens, local_end)
        keys = torch.cat([kc[:, :sink].clone(), kc[:, sink:local_end].clone()], dim=1)
        values = torch.cat([vc[:, :sink].clone(), vc[:, sink:local_end].clone()], dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        return out.transpose(1, 2)
