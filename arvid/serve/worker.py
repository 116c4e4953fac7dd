"""The generating side of a served stream: the generator, its threads, and the bounded frame buffer.

One :class:`StreamSession` per client. Its DiT thread runs :meth:`arvid.pipeline.Pipeline.stream`
(the same generator, engines and prompt re-cache as ``arvid generate``); its decode thread runs the
streaming VAE and the conversion to RGB frames. The DiT of chunk i+1 therefore overlaps the decode
of chunk i (threads on the CPU; on a GPU the decode also runs on its own CUDA stream, ordered after
the DiT's by an event). Decoded frames go into a bounded buffer that the video track drains at the
video's FPS: a client that falls behind blocks the decode thread, whose bounded hand-off blocks the
DiT thread, so memory stays bounded; nothing in a session grows with the stream's length.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .control import Control, PromptSchedule, WeightedPrompt, blend

BUFFER_CHUNKS = 1  # decoded chunks the frame buffer holds before decoding (and then generation) waits
POLL_S = 0.1  # how often a blocked thread looks at the stop flag
_RESET = object()  # decode-queue marker: a new stream starts (the VAE's causal cache is cleared)


def warm_up(pipe) -> float:
    """Run and decode two chunks (the first chunk and the steady state; compiled or captured
    variants build here), so the first client does not pay for it. Returns the seconds taken."""
    from arvid.runtime.vae import StreamingVAEDecoder

    t0 = time.perf_counter()
    decoder = StreamingVAEDecoder(pipe.vae)
    for i, c in enumerate(pipe.stream("warm-up", num_frames=None, seed=0, decode=False)):
        decoder.decode(c.latents)
        if i == 1:
            break
    return time.perf_counter() - t0


@dataclass
class Frame:
    """One decoded video frame in the buffer; the first frame of a chunk carries the chunk's event."""

    image: np.ndarray  # [H, W, 3] uint8
    event: dict[str, Any] | None


@dataclass
class _Pending:
    """A chunk between the DiT thread and the decode thread."""

    latents: torch.Tensor
    event: dict[str, Any]
    ready: Any  # a torch.cuda.Event recorded after the chunk on the DiT's stream, or None


class StreamSession:
    """One client's stream: DiT thread -> decode thread -> bounded frame buffer.

    Parameters
    ----------
    pipe : the :class:`~arvid.pipeline.Pipeline` (one session at a time uses it).
    prompts : the starting prompts (blended by weight).
    seed : noise seed (``Pipeline.stream``'s: a fixed seed and prompt schedule give ``generate``'s latents).
    fps : the video's frame rate (for the ``realtime`` flag of the events).
    name : the session's id (for the observer and the logs).
    observer : test hook, ``observer(name, event, latents [1, chunk, C, h, w])`` per chunk, in the DiT thread.
    """

    def __init__(
        self,
        pipe,
        prompts: list[WeightedPrompt],
        *,
        seed: int,
        fps: int,
        name: str = "",
        metrics=None,
        observer: Callable[[str, dict, torch.Tensor], None] | None = None,
    ) -> None:
        self.pipe, self.seed, self.fps, self.metrics, self.observer = pipe, seed, fps, metrics, observer
        self.name = name
        chunk = pipe.stream_config.chunk_frames
        self.chunk_video_frames = 4 * chunk  # a steady chunk's frames (the very first has 3 fewer)
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=BUFFER_CHUNKS * self.chunk_video_frames)
        self._decode_q: queue.Queue = queue.Queue(maxsize=1)  # one chunk in flight between the threads
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._reset = threading.Event()
        self._lock = threading.Lock()  # guards the prompt-receipt times below
        self._prompt_at: float | None = None  # when the prompt now pending arrived (prompt-to-pixel)
        self.schedule = PromptSchedule(lambda text: pipe.encode(text)[0], prompts)
        self.error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._guard(self._generate), name="arvid-serve-dit", daemon=True),
            threading.Thread(target=self._guard(self._decode), name="arvid-serve-vae", daemon=True),
        ]
        self._cuda = pipe.device.type == "cuda"

    # -- control (event-loop thread) ----------------------------------------------------------------
    def start(self) -> StreamSession:
        for t in self._threads:
            t.start()
        return self

    def apply(self, c: Control) -> None:
        """Apply a parsed control message (encoding its prompts here, so a bad one fails here)."""
        if c.prompts is not None:
            at = time.perf_counter()
            target = blend(c.prompts, self.schedule.encode)  # encoded outside the lock (the slow part)
            with self._lock:
                self._prompt_at = at
                self.schedule.set(c.prompts, c.transition_steps, c.method, target=target)
        if c.paused is not None:
            (self._running.clear if c.paused else self._running.set)()
        if c.reset_cache:
            self._reset.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop both threads and wait for them, at most ``timeout`` s each (None: until they end; a chunk in
        progress finishes first)."""
        self._stop.set()
        self._running.set()
        for t in self._threads:
            if t is not threading.current_thread() and t.is_alive():
                t.join(timeout)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- threads --------------------------------------------------------------------------------------
    def _guard(self, fn):
        def run():
            try:
                if self._cuda:  # this thread's current device is the slot's (streams, events, graph captures)
                    torch.cuda.set_device(self.pipe.device)
                with torch.inference_mode():
                    fn()
            except _Stopped:
                pass
            except BaseException as e:  # reported to the client as an error event and in the server log
                logging.getLogger("arvid.serve").exception("session %s: generation failed", self.name)
                self.error = e
                self._stop.set()

        return run

    def _put(self, q: queue.Queue, item) -> None:
        """``q.put(item)``, waiting while it is full, until the session stops."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _prompt_source(self, frame_start: int) -> torch.Tensor | None:
        """The generator's ``prompt_source``: the schedule's next embeddings, noting when the prompt
        that caused them arrived (the first step of a transition carries it)."""
        with self._lock:
            new = self.schedule(frame_start)
            self._switch_at, self._prompt_at = (self._prompt_at, None) if new is not None else (None, self._prompt_at)
        return new

    def _generate(self) -> None:
        side = torch.cuda.current_stream(self.pipe.device) if self._cuda else None
        index = 0  # chunk index over the whole session (a reset_cache does not restart it)
        epoch = 0  # streams started (1 + reset_cache messages)
        while not self._stop.is_set():
            self._reset.clear()
            self._switch_at = None
            stream = self.pipe.stream(
                self.schedule.current, num_frames=None, seed=self.seed, prompt_source=self._prompt_source, decode=False
            )
            try:
                t0 = time.perf_counter()
                for c in stream:
                    if self._cuda:
                        side.synchronize()  # the DiT time is the GPU's, not the launch's
                    dit_ms = (time.perf_counter() - t0) * 1e3
                    event = {
                        "type": "chunk",
                        "index": index,
                        "stream": epoch,
                        "frame_start": c.frame_start,
                        "prompts": self.schedule.shown(),
                        "transition_left": self.schedule.transition_left,
                        "recached": bool(c.recached),
                        "dit_ms": round(dit_ms, 3),
                        "_dit_span": (t0, t0 + dit_ms / 1e3),  # perf_counter times (not sent): overlap checks
                    }
                    if c.recached and self._switch_at is not None:
                        event["_prompt_at"] = self._switch_at  # server-side prompt-to-pixel (not sent)
                    if self.observer is not None:
                        self.observer(self.name, event, c.latents)
                    ready = None
                    if self._cuda:
                        ready = torch.cuda.Event()
                        ready.record()
                    self._put(self._decode_q, _Pending(c.latents, event, ready))
                    index += 1
                    # The next chunk starts once the decode thread has taken this one: it then overlaps
                    # that decode, and its prompt is read as late as can be (lower prompt-to-pixel).
                    while self._decode_q.qsize() or not self._running.is_set():  # (or paused)
                        if self._stop.is_set():
                            raise _Stopped
                        time.sleep(0.002 if self._running.is_set() else POLL_S)
                    if self._stop.is_set() or self._reset.is_set():
                        break
                    t0 = time.perf_counter()
            finally:
                stream.close()
            if self._reset.is_set():
                epoch += 1
                self._put(self._decode_q, _RESET)

    def _decode(self) -> None:
        from arvid.runtime.vae import StreamingVAEDecoder
        from arvid.runtime.video import to_uint8

        decoder = StreamingVAEDecoder(self.pipe.vae)
        stream = torch.cuda.Stream(self.pipe.device) if self._cuda else None
        chunk_s = self.chunk_video_frames / self.fps
        while True:
            try:
                item = self._decode_q.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None
                continue
            if item is _RESET:
                decoder.reset()
                continue
            t0 = time.perf_counter()
            if stream is not None:
                with torch.cuda.stream(stream):
                    stream.wait_event(item.ready)
                    # made on the DiT's stream, read on this one: the allocator must not hand its memory
                    # back to the DiT's stream before this decode is done
                    item.latents.record_stream(stream)
                    images = to_uint8(decoder.decode(item.latents)[0])  # .cpu() inside waits for the stream
            else:
                images = to_uint8(decoder.decode(item.latents)[0])
            vae_ms = (time.perf_counter() - t0) * 1e3
            event = item.event
            event["vae_ms"] = round(vae_ms, 3)
            event["_vae_span"] = (t0, t0 + vae_ms / 1e3)
            event["frames"] = len(images)
            # real time: the slower of the two overlapped stages keeps up with the video's frame rate
            event["realtime"] = max(event["dit_ms"], vae_ms) <= chunk_s * 1e3
            if self.metrics is not None:
                self.metrics.chunk(event)
            for k, image in enumerate(images):
                self._put(self.frames, Frame(image, event if k == 0 else None))


class _Stopped(Exception):
    """The session stopped while a thread waited."""
