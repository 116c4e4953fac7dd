"""Interactive generation: prompts that change while the video streams.

:meth:`StreamingGenerator.stream` takes ``prompt_source(frame_start) -> embeddings | None``,
asked at every chunk boundary after the first; embeddings switch the prompt there (KV re-cache,
exactly as a scheduled switch), ``None`` keeps the current one.

:class:`LivePromptReader` is such a source: a background thread reads lines (standard input) into
a queue; each chunk boundary takes the next queued prompt, in the order typed.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import TextIO

import torch


class LivePromptReader:
    """Prompts typed while the video is generated: one per line, read by a daemon thread.

    Parameters
    ----------
    encode : prompt text -> embeddings ``[B, text_len, text_dim]`` (e.g. a ``TextEncoder``).
    lines : the text stream to read (default: standard input).

    Calling the reader with a chunk's first latent frame returns the next queued prompt's embeddings
    (encoded then, in the generating thread) or ``None``. ``switches`` records ``(frame, prompt)``.
    """

    def __init__(self, encode: Callable[[str], torch.Tensor], lines: TextIO | None = None) -> None:
        self.encode = encode
        self.lines = lines if lines is not None else sys.stdin
        self.queue: queue.Queue[str] = queue.Queue()
        self.switches: list[tuple[int, str]] = []
        self.closed = threading.Event()  # set when the stream ends (EOF)
        self._thread = threading.Thread(target=self._read, name="arvid-prompt-reader", daemon=True)

    def start(self) -> LivePromptReader:
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            for line in self.lines:
                text = line.strip()
                if text:
                    self.queue.put(text)
        except (OSError, ValueError):  # stdin closed or not readable: no more prompts, generation goes on
            pass
        finally:
            self.closed.set()

    def put(self, text: str) -> None:
        """Queue a prompt directly (what the reader thread does for each line)."""
        self.queue.put(text)

    def __call__(self, frame_start: int) -> torch.Tensor | None:
        try:
            text = self.queue.get_nowait()
        except queue.Empty:
            return None
        self.switches.append((frame_start, text))
        return self.encode(text)
