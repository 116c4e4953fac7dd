"""Model and streaming configuration: presets, LongLive's shipped settings, and the names of the graphs.

Torch-free (standard library only): the command line's parser reads its choices here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the causal Wan2.1 DiT (names follow Wan's ``config.json``)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    # Size of the RoPE position table along each axis. Wan trains with 1024; frames past
    # it are an error rather than a silent wrap-around (1024 latent frames = 256 s of video).
    rope_max_positions: int = 1024

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class Preset:
    """A model size plus the latent geometry it is run at."""

    name: str
    model: ModelConfig
    latent_height: int  # latent pixels (video height / 8)
    latent_width: int
    default_frames: int  # latent frames a plain `arvid generate` makes

    @property
    def tokens_per_frame(self) -> int:
        _, ph, pw = self.model.patch_size
        return (self.latent_height // ph) * (self.latent_width // pw)

    @property
    def video_size(self) -> tuple[int, int]:
        """(height, width) in pixels after the VAE (stride 8)."""
        return self.latent_height * 8, self.latent_width * 8


PRESETS: dict[str, Preset] = {
    # 832x480 video -> 60x104 latent -> 30x52 = 1560 tokens per latent frame.
    "wan2.1-t2v-1.3b": Preset("wan2.1-t2v-1.3b", ModelConfig(), 60, 104, default_frames=21),
    # A few small layers so that a whole streaming run takes well under a second on a CPU.
    "tiny": Preset(
        "tiny",
        ModelConfig(
            dim=64,
            ffn_dim=128,
            num_heads=2,
            num_layers=2,
            freq_dim=32,
            text_dim=32,
            text_len=16,
        ),
        latent_height=8,
        latent_width=8,
        default_frames=12,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class StreamConfig:
    """Streaming settings. The defaults are the ones LongLive ships."""

    chunk_frames: int = 3  # latent frames generated per chunk
    sink_frames: int = 3  # the first chunk, pinned in the cache
    attention_frames: int = 12  # sink + window, the current chunk included
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    num_train_timesteps: int = 1000
    shift: float = 5.0
    context_noise: float = 0.0  # timestep of the clean-context cache update
    global_sink: bool = True

    def __post_init__(self) -> None:
        c = self.chunk_frames
        if c < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {c}")
        if self.sink_frames < 0 or self.sink_frames % c:
            raise ValueError(f"sink_frames ({self.sink_frames}) must be a multiple of chunk_frames ({c})")
        if self.attention_frames % c or self.attention_frames <= self.sink_frames:
            raise ValueError(
                f"attention_frames ({self.attention_frames}) must be a multiple of chunk_frames ({c}) "
                f"and larger than sink_frames ({self.sink_frames})"
            )
        if not self.denoising_steps:
            raise ValueError("denoising_steps is empty")
        for s in self.denoising_steps:
            if not 0 < s <= self.num_train_timesteps:
                raise ValueError(f"denoising step {s} outside (0, {self.num_train_timesteps}]")
        if not 0 <= self.context_noise <= self.num_train_timesteps:
            raise ValueError(f"context_noise {self.context_noise} outside [0, {self.num_train_timesteps}]")

    @property
    def window_frames(self) -> int:
        return self.attention_frames - self.sink_frames

    @property
    def sink_chunks(self) -> int:
        return self.sink_frames // self.chunk_frames

    @property
    def slot_chunks(self) -> int:
        """Chunk slots in the ring buffer (sink + window)."""
        return self.attention_frames // self.chunk_frames

    def replace(self, **changes) -> StreamConfig:
        return dataclasses.replace(self, **changes)


def check_frames(frames: int, chunk: int) -> int:
    """``frames`` if it is a positive multiple of the chunk (latent frames), else a clear error."""
    if frames <= 0 or frames % chunk:
        raise ValueError(f"--frames {frames} is not a positive multiple of the chunk ({chunk})")
    return frames


# The functional graphs of a stream, as engines run them and exporters write them: the DiT's
# denoising step, the whole chunk (steps, re-noise, clean-context pass) and the re-cache pass of a
# prompt switch (chunk_step.py), and the streaming VAE decoder's step (vae.py), which only the
# ONNX export makes.
DIT_GRAPH_KINDS = ("step", "chunk", "recache")
GRAPH_KINDS = (*DIT_GRAPH_KINDS, "vae-step")
