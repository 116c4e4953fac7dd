"""``/metrics``: the server's Prometheus metrics (prometheus-client), one registry per server.

A registry of its own (not prometheus-client's global one) so that several servers in one process
(the tests) do not share counters.
"""

from __future__ import annotations

from typing import Any

from arvid.runtime.optional import require

# chunk stages take ~10 ms (tiny, CPU) to seconds (1.3B, slow GPUs); latencies up to tens of seconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The ``arvid_*`` metrics of one server."""

    def __init__(self) -> None:
        prom = require("prometheus_client", purpose="arvid serve's /metrics")
        self._prom = prom
        self.registry = r = prom.CollectorRegistry()
        self.chunk_seconds = prom.Histogram(
            "arvid_chunk_seconds", "Time of one chunk per stage (dit: generation; vae: decode to RGB)",
            ["stage"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.recache_seconds = prom.Histogram(
            "arvid_recache_chunk_seconds", "DiT time of chunks that began with a KV re-cache (re-cache included)",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_to_pixel = prom.Histogram(
            "arvid_prompt_to_pixel_seconds",
            "Prompt message received -> the first frame generated under it handed to the video track",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.frames_sent = prom.Counter("arvid_frames_sent", "Video frames handed to WebRTC", registry=r)
        self.chunks = prom.Counter("arvid_chunks", "Chunks generated and decoded", registry=r)
        self.stalls = prom.Counter("arvid_stalls", "Frames that were due before they were decoded", registry=r)
        self.errors = prom.Counter("arvid_control_errors", "Control messages refused", registry=r)
        self.sessions = prom.Gauge("arvid_sessions", "Streaming sessions open", registry=r)
        self.max_sessions = prom.Gauge("arvid_max_sessions", "Sessions this server takes at once", registry=r)
        self.rejected = prom.Counter("arvid_sessions_rejected", "Offers refused with 503 (no free worker)", registry=r)
        self.queue_depth = prom.Gauge(
            "arvid_queue_depth", "Decoded frames waiting to be sent, all sessions", registry=r
        )
        self.ready = prom.Gauge("arvid_ready", "1 once the model is loaded and warmed up", registry=r)

    def chunk(self, event: dict[str, Any]) -> None:
        """One decoded chunk's event (any thread: prometheus-client's metrics are thread-safe)."""
        self.chunks.inc()
        self.chunk_seconds.labels("dit").observe(event["dit_ms"] / 1e3)
        self.chunk_seconds.labels("vae").observe(event["vae_ms"] / 1e3)
        if event.get("recached"):
            self.recache_seconds.observe(event["dit_ms"] / 1e3)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
