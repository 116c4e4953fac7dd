"""Video output: an mp4 written with PyAV as frames arrive, never left half-written; PNG frames.

:class:`VideoWriter` encodes into a temporary file beside the target and renames it when the
container is closed properly. On an exception the temporary file is removed; on Ctrl-C or SIGTERM
(``KeyboardInterrupt``, or :class:`~arvid.runtime.files.Terminated` under
:func:`~arvid.runtime.files.sigterm_as_interrupt`) the frames written so far are finalised into a
playable file and ``interrupted`` is set so the caller can say so. Either a complete, playable file,
a playable prefix reported as such, or none.
"""

from __future__ import annotations

import contextlib
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write, current_umask, path_error, signals_deferred
from .optional import require

PREFERRED_CODECS = ("libx264", "libopenh264", "h264", "mpeg4")


def pick_codec(requested: str | None = None) -> str:
    """``requested`` if this PyAV build has it as a video encoder, else the first of H.264 (libx264) /
    OpenH264 / MPEG-4 Part 2 this PyAV build can encode (with a note on stderr when it is not libx264).

    A name that is unknown, decoder-only or not a video codec (``aac``) is a ``ValueError``.
    """
    if requested is not None:
        kind = _encoder_type(requested)
        if kind is None:
            raise ValueError(f"codec {requested!r} is not available in this PyAV build as an encoder")
        if kind != "video":
            raise ValueError(f"codec {requested!r} is an {kind} encoder, not a video encoder (e.g. libx264, mpeg4)")
        return requested
    for name in PREFERRED_CODECS:
        if _encoder_type(name) == "video":
            if name != "libx264":
                print(f"note: libx264 is not in this PyAV build; encoding with {name}", file=sys.stderr)
            return name
    raise ValueError(f"no mp4 video encoder in this PyAV build (tried {', '.join(PREFERRED_CODECS)})")


def _encoder_type(name: str) -> str | None:
    """``"video"`` / ``"audio"`` / ... for an encoder PyAV has, ``None`` for no encoder of that name
    (unknown, or listed as a decoder only, as a decoder-only ``h264`` is)."""
    av = require("av", purpose="writing .mp4")

    if name not in av.codecs_available:
        return None
    try:
        return av.codec.Codec(name, "w").type
    except Exception:  # av.codec.UnknownCodecError: known name, no encoder
        return None


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` float in [-1, 1] -> ``[T, H, W, 3]`` uint8 (rounded)."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class VideoWriter:
    """Append frames to an mp4 (yuv420p, ``fps`` frames per second) as they come.

    Parameters
    ----------
    path : the final ``.mp4``; written as a hidden temporary file beside it until :meth:`close`.
    width, height : frame size in pixels; both must be even (yuv420p halves the chroma planes).
    fps : frames per second (Wan / LongLive: 16).
    codec : an encoder name, or ``None`` for libx264 with fallbacks (see :func:`pick_codec`).
    metadata : container tags (e.g. prompt, seed), written as mp4 metadata that
        ``av.open(path).metadata`` reads back (custom keys need ffmpeg's ``use_metadata_tags``).

    Use as a context manager; ``frames_written`` and ``interrupted`` tell what happened.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: int = 16,
        codec: str | None = None,
        crf: int = 18,
        metadata: dict[str, str] | None = None,
    ) -> None:
        av = require("av", purpose="writing .mp4")

        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"{self.path}: video output must be .mp4")
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: frame size {width}x{height} must be positive and even for yuv420p")
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"{self.path}: fps must be a positive integer, got {fps!r}")
        self.width, self.height, self.fps = width, height, fps
        self.codec = pick_codec(codec)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.mp4")
        self.frames_written = 0
        self.interrupted = False
        # use_metadata_tags: the mp4 muxer keeps only a few standard tags unless told to keep every key.
        opts = {"movflags": "use_metadata_tags"} if metadata else {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.tmp), mode="w", format="mp4", options=opts)
        except OSError as e:
            raise path_error(e, self.path, "cannot write") from e
        try:
            for key, value in sorted((metadata or {}).items()):
                self._container.metadata[key] = str(value)
            self._stream = self._container.add_stream(self.codec, rate=Fraction(fps))
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            if self.codec in ("libx264", "libopenh264"):
                self._stream.options = {"crf": str(crf)} if self.codec == "libx264" else {}
        except BaseException:
            self._container.close()
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Append frames: ``[T, 3, H, W]`` float in [-1, 1] (the VAE's output) or ``[T, H, W, 3]`` uint8."""
        import av

        arr = to_uint8(frames) if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"{self.path}: frames must be [T, {self.height}, {self.width}, 3] uint8 "
                f"(or [T, 3, H, W] float), got {arr.shape} {arr.dtype}"
            )
        try:
            for img in arr:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1
        except OSError as e:  # a full disk names the video, not our temporary file
            raise path_error(e, self.path, "cannot write") from e

    def close(self) -> None:
        """Flush the encoder, close the container and move the file into place."""
        if self._container is None:
            return
        with signals_deferred():  # a Ctrl-C / SIGTERM now would lose every frame written: it waits
            try:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                os.chmod(self.tmp, 0o666 & ~current_umask())
                os.replace(self.tmp, self.path)
            except BaseException as e:
                self.abort()  # a file that could not be finalized is not passed off as a video
                if isinstance(e, OSError):
                    raise path_error(e, self.path, "cannot write") from e
                raise

    def abort(self) -> None:
        """Drop the output: close the container and delete the temporary file."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is being discarded; a close error changes nothing
                self._container.close()
            self._container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt) and self.frames_written:
            self.interrupted = True  # keep what was made: finalised, playable, reported by the caller
            try:
                self.close()
            except Exception:
                self.abort()
                self.interrupted = False
        else:
            self.abort()


def read_video_info(path: str | Path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video file, by decoding it (used by tests and checks)."""
    av = require("av", purpose="reading video")

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate or 0)


def write_png_frames(frames: torch.Tensor, folder: str | Path, start: int) -> None:
    """Write ``[T, 3, H, W]`` float frames as ``folder/frame_{start + i:06d}.png`` (each written to a
    temporary name and renamed)."""
    Image = require("PIL.Image", purpose="writing PNG frames")

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(frames)):
            dest = folder / f"frame_{start + i:06d}.png"
            atomic_write(dest, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
    except OSError as e:
        if created:  # a folder made for these frames and left empty is not left behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        if getattr(e, "worded", False):
            raise
        raise path_error(e, folder, "cannot write") from e
