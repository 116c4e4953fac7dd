"""The Python API: :class:`Pipeline` loads the DiT, text encoder and VAE once and streams decoded video.

>>> from arvid import Pipeline
>>> pipe = Pipeline.from_pretrained("tiny")  # the tiny preset, random weights, no files
>>> for chunk in pipe.stream(["a cat", "a dog"], switch_frames=[6], num_frames=12):
...     chunk.frames  # [T, H, W, 3] uint8 of this chunk, as soon as it is decoded
>>> pipe.generate("a red fox", num_frames=12).save("fox.mp4")

It sits on top of every layer (it may build any variant the runtime or the engines offer) and
below the ``arvid`` command line, which is a thin layer over it: ``arvid generate`` and ``arvid
interactive`` call :meth:`Pipeline.from_pretrained` and :meth:`Pipeline.write`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arvid.runtime import PRESETS, GeneratorOptions, Preset, StreamConfig, StreamingGenerator, get_preset
from arvid.runtime.executors import build_executor
from arvid.runtime.generator import NoiseSource, check_int, check_switch_frames, check_tensor, validate_schedule

# the loaders live beside load_dit (arvid.runtime.loaders); their names stay importable from here
from arvid.runtime.loaders import WeightSource, check_sources, load_text_encoder_for, load_vae_for  # noqa: F401

Prompt = str | torch.Tensor  # text, or embeddings [1, text_len, text_dim]


@dataclass
class PipelineChunk:
    """One finished chunk of a :meth:`Pipeline.stream`.

    ``video`` is the VAE's output for this chunk, ``[T, 3, H, W]`` float32 in [-1, 1] (T = 1 + 4 (F - 1)
    video frames for the first chunk, 4 F after), or ``None`` for a pipeline without a VAE;
    :attr:`frames` is the same as ``[T, H, W, 3]`` uint8.
    """

    index: int  # chunk index
    frame_start: int  # first latent frame of the chunk
    latents: torch.Tensor  # [1, chunk_frames, C, h, w] float32, the chunk's x0, on the model's device
    video: torch.Tensor | None  # [T, 3, H, W] float32 in [-1, 1], or None without a VAE
    recached: bool  # a prompt switch (KV re-cache) happened right before this chunk

    @property
    def frames(self) -> np.ndarray:
        """``[T, H, W, 3]`` uint8 video frames (rounded from :attr:`video`)."""
        from arvid.runtime.video import to_uint8

        if self.video is None:
            raise ValueError("this pipeline has no VAE: only latents (load it with need_vae=True)")
        return to_uint8(self.video)


@dataclass
class GeneratedVideo:
    """What :meth:`Pipeline.generate` returns: the latents, the decoded video and how they were made."""

    latents: torch.Tensor  # [1, F, C, h, w] float32 on the CPU
    video: torch.Tensor | None  # [T, 3, H, W] float32 in [-1, 1] on the CPU, or None without a VAE
    metadata: dict[str, str]  # preset, seed, backend, prompts, ... (written into saved files)
    fps: int = 16

    @property
    def frames(self) -> np.ndarray:
        """``[T, H, W, 3]`` uint8 video frames."""
        from arvid.runtime.video import to_uint8

        if self.video is None:
            raise ValueError("no decoded video: the pipeline was loaded without a VAE")
        return to_uint8(self.video)

    def save(self, path: str | Path, *, codec: str | None = None) -> Path:
        """Write ``.mp4`` (the video, H.264 yuv420p at :attr:`fps`) or ``.safetensors`` (``latents``
        ``[1, F, C, h, w]`` with :attr:`metadata`); never a partly written file. Returns the path."""
        from arvid.runtime.video import VideoWriter

        path = Path(path)
        kind = output_kind(path)
        if kind == "latents":
            return save_latents(path, self.latents, self.metadata)
        if self.video is None:
            raise ValueError(f"{path}: no decoded video to write (the pipeline has no VAE); save .safetensors")
        h, w = self.video.shape[-2:]
        with VideoWriter(path, width=w, height=h, fps=self.fps, codec=codec) as writer:
            writer.write(self.video)
        return path


@dataclass
class WriteResult:
    """What :meth:`Pipeline.write` made."""

    latents: torch.Tensor | None  # [1, F, C, h, w] on the CPU when asked for (keep_latents), else None
    num_frames: int  # latent frames generated
    video_frames: int  # video frames written (0 without a VAE)
    seconds: float  # wall time of the stream, decoding and writing included


def output_kind(path: Path) -> str:
    """``"video"`` for ``.mp4``, ``"latents"`` for ``.safetensors``; a clear error otherwise."""
    kind = {".mp4": "video", ".safetensors": "latents"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: use .mp4 for video or .safetensors for latents")
    return kind


def save_latents(path: str | Path, latents: torch.Tensor, meta: dict[str, str]) -> Path:
    """``latents`` as ``{"latents": ...}`` in a .safetensors with string metadata (atomic, byte-reproducible)."""
    from arvid.runtime.files import write_safetensors

    return write_safetensors(path, {"latents": latents.contiguous()}, meta)


class Pipeline:
    """DiT + text encoder + VAE + a streaming generator, loaded once; streams prompts to decoded video.

    Build it with :meth:`from_pretrained`. The generator (backend, graphs, KV cache) is built on
    first use and reused across streams.
    """

    def __init__(
        self,
        preset: Preset,
        model,
        *,
        text_encoder=None,
        vae=None,
        stream_config: StreamConfig | None = None,
        options: GeneratorOptions | None = None,
        weights: str = "random weights",
        sequence_parallel=None,
    ) -> None:
        param = model.patch_embedding.weight
        self.preset, self.model = preset, model
        self.text_encoder, self.vae = text_encoder, vae
        self.device, self.dtype = param.device, param.dtype
        self.stream_config = stream_config or StreamConfig()
        self.options = options or GeneratorOptions()
        self.weights = weights
        self.sequence_parallel = sequence_parallel  # runtime.parallel.SequenceParallel or None
        self._generator: StreamingGenerator | None = None

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = "tiny",
        *,
        preset: str | None = None,
        checkpoint: str | Path | None = None,
        longlive_ckpt: str | Path | None = None,
        longlive_weights: str = "auto",
        lora: str | Path | None = None,
        lora_alpha: float | None = None,
        lora_rank: int | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        backend: str | GeneratorOptions | None = None,
        text_encoder_device: str = "device",
        stream_config: StreamConfig | None = None,
        seed: int = 0,
        need_vae: bool = True,
        need_text: bool = True,
        sequence_parallel=None,
    ) -> Pipeline:
        """Load a pipeline.

        Parameters
        ----------
        model : ``None`` for the ``preset`` alone (a folder named like the preset is not read), a
            Wan2.1-T2V model directory (original or diffusers layout: DiT, umT5, VAE), or a
            preset name (``"tiny"``: random DiT, tiny random umT5 with a byte tokenizer and a tiny
            random VAE, no files; ``"wan2.1-t2v-1.3b"``: random DiT at the real sizes with stand-in
            prompt embeddings, latents only: it needs ``need_vae=False``, as there is no VAE to load).
        preset : the latent geometry (default: the model directory's 832x480 Wan geometry).
        checkpoint, longlive_ckpt, longlive_weights, lora, lora_alpha, lora_rank : DiT weights on top
            of ``model`` (see :func:`arvid.runtime.loaders.load_dit`, the one loader).
        device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype : ``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype (default: bf16 on CUDA, fp32 on the CPU).
        backend : a variant string such as ``"triton+graphs+fp8kv"`` or :class:`GeneratorOptions`
            (default: the fastest attention backend that runs here).
        text_encoder_device : umT5 on ``"device"``, on the ``"cpu"``, or ``"offload"``-ed to the CPU between prompts.
        stream_config : chunk / sink / attention frames, denoising steps, ... (default: LongLive's).
        seed : seed of random weights (no checkpoint) and of the tiny text encoder.
        need_vae, need_text : load the VAE (decoded video) and the text encoder (text prompts).
        sequence_parallel : a :class:`arvid.runtime.parallel.SequenceParallel` group (every rank builds
            the same pipeline; the generator splits each forward over the group), or None.
        """
        from arvid.runtime.devices import resolve_device, resolve_dtype

        _check_path(model, "model")
        for name, value in (("checkpoint", checkpoint), ("longlive_ckpt", longlive_ckpt), ("lora", lora)):
            _check_path(value, name)
        if not isinstance(device, (str, torch.device)):
            raise TypeError(
                f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device, got {type(device).__name__}"
            )
        if dtype is not None and not isinstance(dtype, (str, torch.dtype)):
            raise TypeError(f"dtype must be 'fp32', 'bf16', 'fp16', a torch.dtype or None, got {type(dtype).__name__}")
        if backend is not None and not isinstance(backend, (str, GeneratorOptions)):
            raise TypeError(f"backend must be a variant string, GeneratorOptions or None, got {type(backend).__name__}")
        if stream_config is not None and not isinstance(stream_config, StreamConfig):
            raise TypeError(f"stream_config must be a StreamConfig or None, got {type(stream_config).__name__}")
        check_int(seed, "seed", minimum=0)

        dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        if model is None:  # the preset alone (the CLI without --model): a folder named like it is not read
            model, is_preset = preset or "tiny", True
        else:
            is_preset = isinstance(model, str) and model in PRESETS and not Path(model).is_dir()
        name = preset or (str(model) if is_preset else "wan2.1-t2v-1.3b")
        get_preset(name)  # a bad name fails first
        if not is_preset and isinstance(model, str) and "/" not in model and not Path(model).exists():
            raise ValueError(f"{model!r} is neither a model directory nor a preset ({', '.join(PRESETS)})")
        source = WeightSource(
            model_dir=None if is_preset else model, checkpoint=checkpoint, longlive_ckpt=longlive_ckpt,
            longlive_weights=longlive_weights, lora=lora, lora_alpha=lora_alpha, lora_rank=lora_rank, seed=seed,
        )  # fmt: skip
        return cls.from_weights(
            source, preset=name, device=dev, dtype=dt, backend=backend, text_encoder_device=text_encoder_device,
            stream_config=stream_config, need_vae=need_vae, need_text=need_text, sequence_parallel=sequence_parallel,
        )  # fmt: skip

    @classmethod
    def from_weights(
        cls,
        source: WeightSource,
        *,
        preset: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        backend: str | GeneratorOptions | None = None,
        text_encoder_device: str = "device",
        stream_config: StreamConfig | None = None,
        need_vae: bool = True,
        need_text: bool = True,
        sequence_parallel=None,
    ) -> Pipeline:
        """Load a pipeline from a :class:`~arvid.runtime.loaders.WeightSource` (its model directory
        resolved once, for the preset, the checks and every loader); the other arguments as in
        :meth:`from_pretrained`. ``preset`` None: ``wan2.1-t2v-1.3b`` with a model directory, else ``tiny``."""
        from arvid.runtime import loaders
        from arvid.runtime.devices import resolve_device, resolve_dtype

        if backend is not None and not isinstance(backend, (str, GeneratorOptions)):
            raise TypeError(f"backend must be a variant string, GeneratorOptions or None, got {type(backend).__name__}")
        if stream_config is not None and not isinstance(stream_config, StreamConfig):
            raise TypeError(f"stream_config must be a StreamConfig or None, got {type(stream_config).__name__}")
        dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        p = source.preset(preset)
        files = source.files
        loaders.check_sources(files, p, need_vae=need_vae, need_text=need_text)  # fail before loading gigabytes
        opts = backend if isinstance(backend, GeneratorOptions) else _options(backend)
        dit = loaders.load_dit(source=source, config=p.model, device=dev, dtype=dt)
        text = loaders.load_text_encoder_for(files, p, dev, dt, text_encoder_device, source.seed) if need_text else None
        vae = loaders.load_vae_for(files, p, dev, dt) if need_vae else None
        return cls(
            p, dit, text_encoder=text, vae=vae, stream_config=stream_config, options=opts, weights=source.label,
            sequence_parallel=sequence_parallel,
        )  # fmt: skip

    # -- pieces ----------------------------------------------------------------------------------
    @property
    def generator(self) -> StreamingGenerator:
        """The :class:`StreamingGenerator` (built on first use with :attr:`options`)."""
        if self._generator is None:
            p = self.preset
            size = (p.latent_height, p.latent_width)
            executor = build_executor(
                self.options, self.model, self.stream_config, latent_size=size, sequence_parallel=self.sequence_parallel
            )
            self._generator = StreamingGenerator(
                self.model, self.stream_config, latent_size=size, executor=executor,
                sequence_parallel=self.sequence_parallel,
            )  # fmt: skip
        return self._generator

    @property
    def backend_name(self) -> str:
        return self.generator.backend_name

    def encode(self, prompts: Prompt | Sequence[Prompt]) -> list[torch.Tensor]:
        """``[1, text_len, text_dim]`` per prompt: texts through the text encoder (deterministic stand-in
        embeddings without one, with a note on stderr); embeddings pass through."""
        from arvid.runtime.prompts import placeholder_prompt_embeds

        items = _prompt_items(prompts)
        cfg = self.model.cfg
        out = []
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                check_tensor(
                    item, f"prompts[{i}]", shape=f"[1, text_len, text_dim] = [1, {cfg.text_len}, {cfg.text_dim}]"
                )
                if item.dim() not in (2, 3) or item.shape[-1] != cfg.text_dim:
                    raise ValueError(
                        f"prompts[{i}] embeddings must be [1, text_len, text_dim] (or [text_len, text_dim]) with "
                        f"text_dim {cfg.text_dim}, got shape {tuple(item.shape)}"
                    )
                out.append(item if item.dim() == 3 else item[None])
            elif self.text_encoder is None:
                out.append(placeholder_prompt_embeds(item, self.preset))
            else:
                out.append(self.text_encoder.encode(item))
        return out

    def chunk_video_frames(self, num_frames: int) -> int:
        """Video frames that ``num_frames`` latent frames decode to (0 without a VAE)."""
        from arvid.runtime.vae import video_frames

        return video_frames(num_frames) if self.vae is not None else 0

    # -- streaming -------------------------------------------------------------------------------
    def stream(
        self,
        prompts: Prompt | Sequence[Prompt],
        switch_frames: Sequence[int] = (),
        *,
        num_frames: int | None = None,
        seed: int = 0,
        noise: NoiseSource | None = None,
        prompt_source: Callable[[int], torch.Tensor | None] | None = None,
        decode: bool = True,
    ) -> Iterator[PipelineChunk]:
        """Generate chunk by chunk and yield each chunk, decoded, as soon as it is done.

        Parameters
        ----------
        prompts : one prompt, or one per segment (text, or embeddings ``[1, text_len, text_dim]``).
        switch_frames : latent frames where prompt i+1 takes over (chunk boundaries, increasing).
        num_frames : latent frames to generate (a multiple of the chunk); ``None``: endless, the
            caller stops iterating (memory stays flat).
        seed : the initial noise is drawn chunk by chunk from ``torch.Generator().manual_seed(seed)``
            (the same numbers as one ``torch.randn(1, F, C, h, w)`` draw), the re-noising between
            denoising steps from a generator on the device seeded ``seed + 1``.
        noise : instead of ``seed``'s: a tensor ``[1, F, C, h, w]``, a ``torch.Generator`` or a callable
            ``(chunk_index, shape) -> noise`` (see :meth:`StreamingGenerator.stream`).
        prompt_source : prompts decided while streaming (e.g. typed live), asked at every chunk boundary
            after the first: embeddings switch the prompt there, ``None`` keeps it. ``prompts`` is then one prompt.
        decode : decode each chunk with the VAE (``video`` is ``None`` when False or without a VAE).
        """
        from arvid.runtime.vae import StreamingVAEDecoder

        check_int(num_frames, "num_frames", minimum=1, optional=True)
        check_int(seed, "seed", minimum=0)
        switch_frames = check_switch_frames(switch_frames)  # a one-shot iterator is read once, here
        if not isinstance(decode, bool):
            raise TypeError(f"decode must be a bool, got {type(decode).__name__}")
        embeds = self.encode(prompts)
        gen = self.generator
        if noise is None:
            noise = torch.Generator().manual_seed(seed)
        renoise = torch.Generator(device=self.device).manual_seed(seed + 1)
        decoder = StreamingVAEDecoder(self.vae) if decode and self.vae is not None else None
        for c in gen.stream(
            noise, embeds, switch_frames, num_frames=num_frames, prompt_source=prompt_source, generator=renoise
        ):
            video = decoder.decode(c.latents)[0] if decoder is not None else None
            yield PipelineChunk(c.index, c.frame_start, c.latents, video, c.recached)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        switch_frames: Sequence[int] = (),
        *,
        num_frames: int | None = None,
        seed: int = 0,
        noise: NoiseSource | None = None,
        decode: bool = True,
        fps: int = 16,
    ) -> GeneratedVideo:
        """The whole video at once: :meth:`stream` run to the end. ``num_frames`` defaults to the
        preset's (``noise``'s frame count for a noise tensor). Returns a :class:`GeneratedVideo`
        (``.latents``, ``.video``, ``.frames``, ``.save(path)``)."""
        check_int(fps, "fps", minimum=1)
        switch_frames = check_switch_frames(switch_frames)
        if num_frames is None and not isinstance(noise, torch.Tensor):
            num_frames = self.preset.default_frames
        latents, videos = [], []
        for c in self.stream(prompts, switch_frames, num_frames=num_frames, seed=seed, noise=noise, decode=decode):
            latents.append(c.latents.cpu())
            if c.video is not None:
                videos.append(c.video.cpu())
        lat = torch.cat(latents, dim=1)
        chunk = self.stream_config.chunk_frames
        n_prompts = len(_prompt_items(prompts))
        landed = validate_schedule(lat.shape[1], n_prompts, switch_frames, chunk)  # where the switches took effect
        meta = self.metadata(prompts, landed, seed=seed, num_frames=lat.shape[1])
        return GeneratedVideo(lat, torch.cat(videos) if videos else None, meta, fps=fps)

    def metadata(
        self, prompts: Prompt | Sequence[Prompt], switch_frames: Sequence[int] = (), *, seed: int, num_frames: int
    ) -> dict[str, str]:
        """String metadata of a run (what saved latents carry): preset, weights, backend, stream settings, ..."""
        import json

        from arvid.runtime.files import run_metadata

        items = _prompt_items(prompts)
        texts = [p if isinstance(p, str) else "<embeddings>" for p in items]
        return run_metadata(
            preset=self.preset.name,
            checkpoint=self.weights,
            frames=num_frames,
            seed=seed,
            backend=self.backend_name,
            dtype=self.dtype,
            fp8_kv=self.options.fp8kv,
            compile=self.options.compile,
            graphs=self.options.graphs,
            sequence_parallel=self.sequence_parallel.size if self.sequence_parallel is not None else None,
            switch_frames=",".join(map(str, switch_frames)),
            prompts=json.dumps(texts),
            stream_config=json.dumps(dataclasses.asdict(self.stream_config)),
            layout="[B, F, C, H, W]",
        )

    def write(
        self,
        out: str | Path | None,
        prompts: Prompt | Sequence[Prompt],
        switch_frames: Sequence[int] = (),
        *,
        num_frames: int | None,
        seed: int = 0,
        noise: NoiseSource | None = None,
        prompt_source: Callable[[int], torch.Tensor | None] | None = None,
        stop: Callable[[], bool] | None = None,
        fps: int = 16,
        codec: str | None = None,
        png_dir: str | Path | None = None,
        keep_latents: bool = False,
        progress: bool = False,
        desc: str = "latent frames",
        metadata: dict[str, str] | None = None,
        on_interrupt: Callable[[torch.Tensor | None], None] | None = None,
    ) -> WriteResult:
        """Stream to an ``.mp4`` (``out``; ``None``: no video file), appending each chunk as it is decoded.

        ``png_dir`` also writes every video frame as a PNG; ``keep_latents`` returns all latents (memory
        grows with the length). ``stop()`` is asked before every chunk after the first: True ends the
        stream there (with ``num_frames=None`` the stream runs until it does, or until Ctrl-C).
        ``metadata`` are the mp4's container tags. The progress bar counts latent frames.

        On Ctrl-C or SIGTERM (a ``KeyboardInterrupt``: ``arvid.runtime.files.Terminated``) the frames
        written so far are finalised into a playable mp4 and moved into place, a note on stderr says
        what it holds, ``on_interrupt`` gets the latents finished so far (with ``keep_latents``; else
        ``None``), and the interrupt propagates; a second signal waits until that is done. On any
        other error no file is left behind.
        """
        from tqdm import tqdm

        from arvid.runtime.vae import StreamingVAEDecoder
        from arvid.runtime.video import VideoWriter, write_png_frames

        _check_path(out, "out")
        _check_path(png_dir, "png_dir")
        check_int(fps, "fps", minimum=1)
        check_int(num_frames, "num_frames", minimum=1, optional=True)
        decode = self.vae is not None and (out is not None or png_dir is not None)
        decoder = StreamingVAEDecoder(self.vae) if decode else None
        if (out is not None or png_dir is not None) and self.vae is None:
            raise ValueError("video output needs a VAE: load the pipeline with need_vae=True")
        h, w = self.preset.video_size
        writer = None
        if out is not None:
            writer = VideoWriter(out, width=w, height=h, fps=fps, codec=codec, metadata=metadata)
        chunks: list[torch.Tensor] = []
        t0 = time.perf_counter()
        frames = written = 0
        try:
            # The bar counts latent frames (what the DiT generates), whatever the output.
            with tqdm(
                total=num_frames, unit="latent frame", desc=desc, disable=not progress, dynamic_ncols=True
            ) as bar:
                # Decoded here, not in stream(): a chunk's latents are kept before its decode, so an
                # interrupt during the decode still hands them to on_interrupt.
                for c in self.stream(
                    prompts, switch_frames, num_frames=num_frames, seed=seed, noise=noise,
                    prompt_source=prompt_source, decode=False,
                ):  # fmt: skip
                    frames += c.latents.shape[1]
                    if keep_latents:
                        chunks.append(c.latents.cpu())
                    if decoder is not None:
                        video = decoder.decode(c.latents)[0]  # [T, 3, H, W]
                        if writer is not None:
                            writer.write(video)
                        if png_dir is not None:
                            write_png_frames(video, png_dir, written)
                        written += video.shape[0]
                    bar.update(c.latents.shape[1])
                    if stop is not None and stop():
                        break
            if writer is not None:
                writer.close()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as arvid.runtime.files.Terminated
            from arvid.runtime.files import signals_deferred

            with signals_deferred():  # a second signal waits until the prefix is finalised and reported
                self._keep_prefix(writer, out, num_frames)
                if on_interrupt is not None:
                    on_interrupt(torch.cat(chunks, dim=1).contiguous() if chunks else None)
            raise
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        seconds = time.perf_counter() - t0
        latents = torch.cat(chunks, dim=1).contiguous() if chunks else None
        return WriteResult(latents, frames, written, seconds)

    def _keep_prefix(self, writer, out, num_frames: int | None) -> None:
        """After an interrupt: finalise the video's playable prefix and say what it holds."""
        from arvid.runtime.vae import video_frames

        if writer is None:
            return
        writer.__exit__(KeyboardInterrupt, None, None)
        if not writer.interrupted:
            print(f"interrupted: no video frame was finished; {out} was not written", file=sys.stderr)
            return
        held = f"interrupted: {out} holds the first {writer.frames_written} video frames"
        if num_frames is not None:
            chunk = self.stream_config.chunk_frames
            total = num_frames // chunk
            full = sum(1 for k in range(1, total + 1) if video_frames(k * chunk) <= writer.frames_written)
            held += f" ({full} of {total} chunks in full)"
        print(f"{held}, a playable prefix", file=sys.stderr)


# -- argument checks -------------------------------------------------------------------------------
def _check_path(value: object, name: str) -> None:
    """A path argument: ``str``, ``os.PathLike`` or None."""
    import os

    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or pathlib.Path) or None, got {type(value).__name__}")


def _prompt_items(prompts: object) -> list:
    """The prompts as a list: one text or embedding, or a non-empty sequence of them."""
    if isinstance(prompts, (str, torch.Tensor)):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise TypeError(
            "prompts must be a text, an embedding tensor [1, text_len, text_dim], or a list of them, "
            f"got {type(prompts).__name__}"
        )
    items = list(prompts)
    if not items:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, item in enumerate(items):
        if not isinstance(item, (str, torch.Tensor)):
            raise TypeError(f"prompts[{i}] must be a text or an embedding tensor, got {type(item).__name__}")
    return items


# -- loading pieces --------------------------------------------------------------------------------
def _options(backend: str | None) -> GeneratorOptions:
    # engines (ort, aoti, ...) are registered by name in arvid.runtime.executors: no import needed here
    return GeneratorOptions.from_variant(backend) if backend else GeneratorOptions()
