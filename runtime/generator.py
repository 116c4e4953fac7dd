"""The streaming generator: chunk by chunk, few-step denoising over the KV cache, prompt switches.

Per chunk (LongLive's Algorithm 2): for each denoising step run the DiT on the chunk's noisy
latents (its own K/V are written into its cache slots and attended to, bidirectionally within
the chunk), convert the flow to x0 and re-noise to the next step; the last x0 is the chunk's
output; one more forward on that clean x0 at t = context_noise overwrites the chunk's slots
with clean K/V. At a prompt switch the cross-attention K/V are recomputed from the new prompt
and the self-attention cache is re-built from the last frames (KV re-cache, see
``RingKVCache.plan_recache``).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .chunk_runner import ChunkExecutor
from .config import StreamConfig
from .executors import ExecutorOptions, build_executor
from .model import CausalWanModel
from .prompts import align_switch_frames
from .scheduler import FlowMatchScheduler

if TYPE_CHECKING:
    from .parallel import SequenceParallel


@dataclass
class ChunkOutput:
    index: int  # chunk index
    frame_start: int  # first latent frame of the chunk
    latents: torch.Tensor  # [B, chunk_frames, C, H, W] float32, the chunk's x0
    recached: bool  # a prompt switch (KV re-cache) happened right before this chunk


def validate_schedule(num_frames: int | None, num_prompts: int, switch_frames: Sequence[int], chunk: int) -> list[int]:
    """Check a prompt schedule; returns the switch frames where they take effect.

    LongLive's rule (:func:`~arvid.runtime.prompts.align_switch_frames`): a switch takes effect at the
    first chunk that starts at or after its frame, so with 3-frame chunks a switch at 13 happens at 15.
    Switch frames must be strictly increasing inside ``(0, num_frames)`` and land on different chunks
    before the end of the video (``num_frames`` None: an endless stream, no upper bound); the error
    names what is wrong (out of range, not sorted, duplicate).
    """
    switches = [int(s) for s in switch_frames]
    if num_prompts < 1:
        raise ValueError("at least one prompt is needed")
    if len(switches) != num_prompts - 1:
        raise ValueError(f"{num_prompts} prompts need {num_prompts - 1} switch frames, got {len(switches)}")
    return align_switch_frames(switches, chunk, num_frames)


# -- argument checks of the public API: name the argument and what it should be --------------------
def check_int(value: object, name: str, *, minimum: int | None = None, optional: bool = False) -> None:
    """``value`` is an ``int`` (not a bool, not a float) at least ``minimum``: ``TypeError`` / ``ValueError``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_tensor(x: object, name: str, *, shape: str, dims: int | None = None) -> torch.Tensor:
    """``x`` is a floating-point tensor (of ``dims`` dimensions) with finite values; ``shape`` is the
    expected layout, for the message. NaN or infinite noise or embeddings would only come out as a
    NaN video: refused here, naming the argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be {shape} ({dims} dimensions), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {str(x.dtype).removeprefix('torch.')}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has NaN or infinite values")
    return x


def check_switch_frames(switch_frames: object) -> list[int]:
    """A sequence of ints (``[12, 24]``, a range, a numpy array of ints; not a string, not floats)."""
    if isinstance(switch_frames, (str, bytes)) or not isinstance(switch_frames, Iterable):
        raise TypeError(f"switch_frames must be a sequence of ints (e.g. [12, 24]), got {type(switch_frames).__name__}")
    frames = list(switch_frames)
    for i, s in enumerate(frames):
        check_int(s, f"switch_frames[{i}]")
    return frames


#: The initial noise of a stream: all frames at once ``[B, F, C, H, W]``, a callable
#: ``(chunk_index, shape) -> [B, chunk, C, H, W]``, or a ``torch.Generator`` drawn from chunk by chunk.
NoiseSource = torch.Tensor | Callable[[int, tuple[int, ...]], torch.Tensor] | torch.Generator


class StreamingGenerator:
    """Runs the streaming algorithm with one model and one chunk executor.

    Parameters
    ----------
    model : the causal Wan DiT.
    stream : streaming settings (defaults: LongLive's).
    latent_size : ``(H, W)`` of the latents, e.g. ``(60, 104)`` for 832x480 video.
    batch_size : videos generated together.
    executor : what runs the chunks, built by :func:`~arvid.runtime.executors.build_executor` for this
        model, stream, latent size and batch size. Without it the generator builds one from ``backend``.
    backend : a variant string (``"sdpa"``, ``"triton+graphs+fp8kv"``, ``"aoti+chunk"``; see
        ``executors.py``), :class:`~arvid.runtime.executors.ExecutorOptions`, or ``None`` for the
        fastest attention backend that runs on the model's device.
    cuda_graphs, graph_granularity, kv_cache_dtype, engine_flags : the variant's words as keywords
        (``+graphs`` / ``+stepgraphs``, ``+fp8kv``, an engine's flags), kept for callers of the
        keyword API; they add to ``backend``.
    engine_options : passed to an engine's factory (e.g. ``{"package_dirs": ...}`` for ``aoti``).
    sequence_parallel : run every forward Ulysses sequence parallel over this group (``parallel.py``):
        each rank's cache holds its heads only; the inputs of :meth:`stream` are rank 0's on every
        rank (broadcast). Attention backends only, no CUDA graphs.
    """

    def __init__(
        self,
        model: CausalWanModel,
        stream: StreamConfig | None = None,
        *,
        latent_size: tuple[int, int],
        batch_size: int = 1,
        executor: ChunkExecutor | None = None,
        backend: str | ExecutorOptions | None = None,
        cuda_graphs: bool = False,
        graph_granularity: str = "chunk",
        kv_cache_dtype: torch.dtype | None = None,
        engine_flags: frozenset[str] | set[str] = frozenset(),
        engine_options: dict | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        if not isinstance(model, CausalWanModel):
            raise TypeError(f"model must be an arvid CausalWanModel, got {type(model).__name__}")
        if stream is not None and not isinstance(stream, StreamConfig):
            raise TypeError(f"stream must be a StreamConfig or None, got {type(stream).__name__}")
        if not isinstance(latent_size, (tuple, list)) or len(latent_size) != 2:
            raise TypeError(f"latent_size must be a pair (H, W) of ints, got {latent_size!r}")
        for i, n in enumerate(latent_size):
            check_int(n, f"latent_size[{i}]", minimum=1)
        check_int(batch_size, "batch_size", minimum=1)
        if backend is not None and not isinstance(backend, (str, ExecutorOptions)):
            raise TypeError(f"backend must be a backend or engine name (str) or None, got {type(backend).__name__}")
        if kv_cache_dtype is not None and not isinstance(kv_cache_dtype, torch.dtype):
            raise TypeError(f"kv_cache_dtype must be a torch.dtype or None, got {type(kv_cache_dtype).__name__}")
        if graph_granularity not in ("chunk", "step"):
            raise ValueError(f"graph granularity must be 'chunk' or 'step', got {graph_granularity!r}")
        self.model = model
        self.sequence_parallel = sequence_parallel
        self.stream_cfg = stream or StreamConfig()
        self.scheduler = FlowMatchScheduler(self.stream_cfg)
        param = model.patch_embedding.weight
        self.device, self.dtype = param.device, param.dtype
        h, w = latent_size
        _, ph, pw = model.cfg.patch_size
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        self.latent_size = (h, w)
        self.batch_size = batch_size
        if executor is None:
            opts = _keyword_options(backend, cuda_graphs, graph_granularity, kv_cache_dtype, self.dtype, engine_flags)
            executor = build_executor(
                opts, model, self.stream_cfg, latent_size=self.latent_size, batch_size=batch_size,
                sequence_parallel=sequence_parallel, **(engine_options or {}),
            )  # fmt: skip
        elif backend is not None or cuda_graphs or kv_cache_dtype is not None or engine_flags or engine_options:
            raise ValueError("give an executor or the options to build one (backend, ...), not both")
        self.executor: ChunkExecutor = executor
        self.backend_name: str = getattr(executor, "name", type(executor).__name__)

    # -- what benchmarks read ----------------------------------------------------------------
    @property
    def kv_cache_nbytes(self) -> int:
        return self.executor.kv_cache_nbytes

    @property
    def last_host_ms(self) -> float:
        """Host time of the last chunk (launches or graph replays, no sync)."""
        return self.executor.last_host_ms

    @torch.no_grad()
    def capture(self, prompt: torch.Tensor) -> float:
        """Capture CUDA graphs up front with ``prompt`` ``[B, text_len, text_dim]``; returns seconds
        (0 where the executor captures nothing). Streams after it replay them without capturing."""
        self._check_prompts([prompt])
        self.executor.set_prompt(self.model.text_kv(prompt.to(self.device)))
        return self.executor.capture()

    # -- input checks ------------------------------------------------------------------------
    @property
    def chunk_shape(self) -> tuple[int, int, int, int, int]:
        """``(B, chunk_frames, C, H, W)``: the shape of one chunk's noise and latents."""
        return (self.batch_size, self.stream_cfg.chunk_frames, self.model.cfg.in_dim, *self.latent_size)

    def _check_noise(self, noise: torch.Tensor, what: str = "noise") -> None:
        b, chunk, c, h, w = self.chunk_shape
        check_tensor(noise, what, shape=f"[B, F, C, H, W] = [{b}, F, {c}, {h}, {w}]")
        if noise.dim() != 5 or noise.shape[0] != b or noise.shape[2:] != (c, h, w):
            raise ValueError(f"{what} must be [B, F, C, H, W] = [{b}, F, {c}, {h}, {w}], got {tuple(noise.shape)}")
        f = noise.shape[1]
        if f == 0 or f % chunk:
            raise ValueError(f"frame count {f} is not a positive multiple of the chunk ({chunk} latent frames)")

    def _check_prompts(self, prompts: Sequence[torch.Tensor]) -> None:
        cfg = self.model.cfg
        want = f"[B, text_len, text_dim] = [{self.batch_size}, {cfg.text_len}, {cfg.text_dim}]"
        if not prompts:
            raise ValueError(f"prompts must hold at least one embedding {want}")
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                raise TypeError(
                    f"prompt {i} is text: StreamingGenerator takes embeddings {want} "
                    "(encode the text first, or use arvid.Pipeline, which does)"
                )
            check_tensor(p, f"prompt {i} embeddings", shape=want)
            if p.dim() != 3 or p.shape[0] != self.batch_size or p.shape[2] != cfg.text_dim:
                raise ValueError(
                    f"prompt {i} embeddings must be [B, text_len, text_dim] = "
                    f"[{self.batch_size}, {cfg.text_len}, {cfg.text_dim}], got {tuple(p.shape)}"
                )

    # -- the loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def stream(
        self,
        noise: NoiseSource,
        prompts: torch.Tensor | Sequence[torch.Tensor],
        switch_frames: Sequence[int] = (),
        *,
        num_frames: int | None = None,
        prompt_source: Callable[[int], torch.Tensor | None] | None = None,
        renoise: torch.Tensor | Callable[[int, int], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[ChunkOutput]:
        """Generate chunk by chunk, yielding each chunk's latents as soon as it is done.

        Parameters
        ----------
        noise : the initial noise of every latent frame, one of

            - a tensor ``[B, F, C, H, W]``: all frames at once; F sets the length;
            - a ``torch.Generator``: each chunk's noise ``[B, chunk, C, H, W]`` is drawn from it (on
              its device, in chunk order) when the chunk starts. With batch size 1 the draws equal
              the slices of ``torch.randn(1, F, C, H, W, generator=g)`` from an equally seeded
              generator (the same numbers in the same order); with B > 1 the order is chunk-major,
              so the noise differs from that of one ``[B, F, ...]`` draw;
            - a callable ``noise(chunk_index, shape) -> [B, chunk, C, H, W]``.

            With a generator or a callable and no ``num_frames`` the stream is endless: the caller
            stops iterating. Nothing grows with the length (no per-frame list is kept).
        prompts : one ``[B, text_len, text_dim]`` embedding, or one per prompt segment.
        switch_frames : latent frames where prompt i+1 takes over (increasing); each takes effect at the
            first chunk starting at or after it (LongLive's rule, see :func:`validate_schedule`).
        num_frames : latent frames to generate (a multiple of the chunk); with a noise tensor it
            must equal the tensor's F (or be None).
        prompt_source : instead of a fixed schedule, ``prompt_source(frame_start)`` is asked at every
            chunk boundary after the first; embeddings switch the prompt there (KV re-cache, as a
            scheduled switch does), ``None`` keeps the current one. ``prompts`` is then the first prompt.
        renoise : the noise for each re-noising between steps: a tensor
            ``[num_chunks, steps - 1, B, chunk, C, H, W]`` or a callable ``(chunk, step) -> noise``.
            Default: drawn from ``generator`` (or the global RNG) on the model's device.
        """
        cfg = self.stream_cfg
        chunk = cfg.chunk_frames
        if isinstance(prompts, torch.Tensor):
            prompts = [prompts]
        elif isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)):
            prompts = list(prompts)
        else:
            raise TypeError(
                "prompts must be an embedding tensor [B, text_len, text_dim] or a sequence of them, "
                f"got {type(prompts).__name__}"
            )
        check_int(num_frames, "num_frames", optional=True)
        if prompt_source is not None and not callable(prompt_source):
            raise TypeError(
                "prompt_source must be a callable (frame_start) -> embeddings or None, "
                f"got {type(prompt_source).__name__}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        noise_fn, num_frames = self._noise_source(noise, num_frames)
        self._check_prompts(prompts)
        num_chunks = None if num_frames is None else num_frames // chunk
        if prompt_source is not None:
            if switch_frames or len(prompts) != 1:
                raise ValueError("with a prompt_source give exactly one starting prompt and no switch_frames")
        else:
            switches = validate_schedule(num_frames, len(prompts), check_switch_frames(switch_frames), chunk)
            prompt_source = dict(zip(switches, prompts[1:], strict=True)).get
        renoise_fn = self._renoise_source(renoise, num_chunks, generator)
        sp = self.sequence_parallel
        if sp is not None:  # every rank runs rank 0's inputs, whatever its own RNG or terminal gave
            if num_chunks is None:  # where to stop would be each rank's own decision
                raise ValueError("sequence parallel streams need num_frames (an endless stream is one process only)")
            local_noise, local_renoise, device = noise_fn, renoise_fn, self.device
            noise_fn = lambda ci: sp.broadcast(local_noise(ci).to(device))
            prompts = [sp.broadcast(p.to(device)) for p in prompts]
            renoise_fn = sp.broadcast_source(lambda ci, si: local_renoise(ci, si).to(device))
            prompt_source = sp.broadcast_prompt_source(prompt_source, prompts[0])

        runner = self.executor
        runner.prepare(num_frames if num_frames is not None else chunk)
        runner.set_prompt(self.model.text_kv(prompts[0].to(self.device)))
        # The last attention_frames generated latents, for a re-cache: memory flat in video length.
        history = torch.zeros(self.batch_size, cfg.attention_frames, *self.chunk_shape[2:], device=self.device)
        ci = 0
        while num_chunks is None or ci < num_chunks:
            fs = ci * chunk
            if num_frames is None:
                runner.extend(fs + chunk)  # RoPE positions grow with an endless stream (doubling)
            new_prompt = prompt_source(fs) if ci > 0 else None
            if new_prompt is not None:
                self._check_prompts([new_prompt])
                runner.set_prompt(self.model.text_kv(new_prompt.to(self.device)))
                runner.recache(fs, history)
            renoise_chunk = [renoise_fn(ci, si) for si in range(len(self.scheduler) - 1)]
            x0 = runner.run_chunk(noise_fn(ci), renoise_chunk, fs).clone()
            history = torch.cat([history[:, chunk:], x0], dim=1)
            yield ChunkOutput(ci, fs, x0, new_prompt is not None)
            ci += 1

    def generate(self, noise: NoiseSource, prompts, switch_frames: Sequence[int] = (), **kwargs) -> torch.Tensor:
        """Run :meth:`stream` to the end; returns the latents ``[B, F, C, H, W]`` (float32). A noise
        generator or callable needs ``num_frames``."""
        if noise is None:
            raise TypeError("noise must be a tensor [B, F, C, H, W], a torch.Generator or a callable, got None")
        if not isinstance(noise, torch.Tensor) and kwargs.get("num_frames") is None:
            raise ValueError("generate() needs num_frames with a noise generator or callable (or use stream())")
        return torch.cat([c.latents for c in self.stream(noise, prompts, switch_frames, **kwargs)], dim=1)

    # -- pieces ------------------------------------------------------------------------------
    def _noise_source(self, noise: NoiseSource, num_frames: int | None):
        """``(chunk_index -> [B, chunk, C, H, W], num_frames or None)`` for any :data:`NoiseSource`."""
        shape = self.chunk_shape
        chunk = shape[1]
        if num_frames is not None and (num_frames <= 0 or num_frames % chunk):
            raise ValueError(f"num_frames {num_frames} is not a positive multiple of the chunk ({chunk} latent frames)")
        if isinstance(noise, torch.Tensor):
            self._check_noise(noise)
            if num_frames is not None and num_frames != noise.shape[1]:
                raise ValueError(f"num_frames {num_frames} but the noise tensor has {noise.shape[1]} frames")
            return (lambda ci: noise[:, ci * chunk : (ci + 1) * chunk]), noise.shape[1]
        if isinstance(noise, torch.Generator):
            gen = noise
            return (lambda ci: torch.randn(shape, generator=gen, device=gen.device)), num_frames
        if callable(noise):

            def draw(ci: int) -> torch.Tensor:
                x = noise(ci, shape)
                check_tensor(x, f"noise({ci}, shape)", shape=str(shape))
                if tuple(x.shape) != shape:
                    raise ValueError(f"noise({ci}, shape) must return a tensor {shape}, got {tuple(x.shape)}")
                return x

            return draw, num_frames
        raise TypeError(f"noise must be a tensor, a torch.Generator or a callable, got {type(noise).__name__}")

    def _renoise_source(self, renoise, num_chunks: int | None, generator: torch.Generator | None = None):
        shape = self.chunk_shape
        if renoise is None:
            dev = generator.device if generator is not None else self.device
            return lambda ci, si: torch.randn(shape, generator=generator, device=dev)
        if callable(renoise):
            return renoise
        check_tensor(renoise, "renoise", shape="[num_chunks, steps - 1, B, chunk, C, H, W]")
        if num_chunks is None:
            raise ValueError("an endless stream takes renoise as a callable (chunk, step) -> noise, not a tensor")
        steps = len(self.scheduler) - 1
        want = (num_chunks, steps, *shape)
        if tuple(renoise.shape) != want:
            raise ValueError(
                f"renoise must be [num_chunks, steps - 1, B, chunk, C, H, W] = {want}, got {tuple(renoise.shape)}"
            )
        return lambda ci, si: renoise[ci, si]


def _keyword_options(
    backend: str | ExecutorOptions | None,
    cuda_graphs: bool,
    granularity: str,
    kv_cache_dtype: torch.dtype | None,
    model_dtype: torch.dtype,
    engine_flags: frozenset[str] | set[str],
) -> ExecutorOptions | str | None:
    """``backend`` with the keyword arguments' words added (``cuda_graphs`` -> ``+graphs`` ...)."""
    if not (cuda_graphs or kv_cache_dtype not in (None, model_dtype) or engine_flags):
        return backend
    opts = ExecutorOptions.from_variant(backend) if isinstance(backend, str) else backend or ExecutorOptions()
    if opts.engine is not None and (cuda_graphs or kv_cache_dtype is not None):
        raise ValueError(f"engine {opts.backend!r}: CUDA graphs and the KV-cache dtype are the engine's own options")
    if kv_cache_dtype not in (None, model_dtype, torch.float8_e4m3fn):
        raise ValueError(
            f"attention backend {opts.backend!r} cannot run here: the KV cache dtype must be the model's "
            f"({model_dtype}) or torch.float8_e4m3fn, got {kv_cache_dtype}"
        )
    return dataclasses.replace(
        opts,
        graphs=opts.graphs or (cuda_graphs and granularity == "chunk"),
        stepgraphs=opts.stepgraphs or (cuda_graphs and granularity == "step"),
        fp8kv=opts.fp8kv or kv_cache_dtype == torch.float8_e4m3fn,
        engine_flags=opts.engine_flags | frozenset(engine_flags),
    )
