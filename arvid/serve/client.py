"""An aiortc client of ``arvid serve``: what the tests drive and what ``arvid serve-bench`` measures with.

It posts Scope's offer, receives the video track, opens the ``parameters`` data channel, sends
control messages and records every frame's arrival and every event.

Prompt-to-pixel latency here is: prompt message sent -> the first chunk event that shows the new
prompt received. The server sends a chunk's event when it hands the chunk's first frame to the
video track, so the event arrives with that frame (same connection, one frame interval of jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

from arvid.runtime.optional import require


class Client:
    """One WebRTC session with a server at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, *, token: str | None = None, ice_servers: list[str] = ()) -> None:
        self.url, self.token, self.ice_servers = url.rstrip("/"), token, list(ice_servers)
        self.frames: list[tuple[float, int, int]] = []  # (arrival time, width, height)
        self.events: list[tuple[float, dict]] = []  # (arrival time, event)
        self.images: list[Any] = []  # the last few decoded frames (rgb24 arrays), for checks
        self.keep_images = 4
        self.pc = None
        self.channel = None
        self.t_offer: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._open = asyncio.Event()
        self._new_event = asyncio.Event()

    async def connect(self, prompts: list, *, seed: int | None = None, path: str = "/offer") -> dict:
        """Offer (Scope's body) and answer; returns the server's JSON. HTTP errors raise :class:`HTTPError`."""
        aiortc = require("aiortc", purpose="the serve client")
        aiohttp = require("aiohttp", purpose="the serve client")
        from .app import rtc_configuration

        pc = self.pc = aiortc.RTCPeerConnection(rtc_configuration(self.ice_servers))
        pc.addTransceiver("video", direction="recvonly")
        ch = self.channel = pc.createDataChannel("parameters")
        ch.on("open", self._open.set)
        ch.on("message", self._on_message)

        @pc.on("track")
        def on_track(track):
            self._tasks.append(asyncio.ensure_future(self._receive(track)))

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers the candidates here
        items = [p if isinstance(p, dict) else {"text": p, "weight": 1.0} for p in prompts]
        params: dict[str, Any] = {"prompts": items}
        if seed is not None:
            params["seed"] = seed
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "initialParameters": params}
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.t_offer = time.perf_counter()
        async with aiohttp.ClientSession() as http, http.post(self.url + path, json=body, headers=headers) as r:
            answer = await r.json()
            if r.status != 200:
                await pc.close()
                raise HTTPError(r.status, answer)
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return answer

    async def _receive(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.frames.append((time.perf_counter(), frame.width, frame.height))
                if self.keep_images:
                    self.images = [*self.images[-(self.keep_images - 1) :], frame.to_ndarray(format="rgb24")]
        except Exception:  # the track ended (MediaStreamError) or the connection closed
            return

    def _on_message(self, message) -> None:
        self.events.append((time.perf_counter(), json.loads(message)))
        self._new_event.set()

    async def send(self, message: dict | str) -> float:
        """Send a control message (a dict as JSON, a string as it is); returns when it was sent."""
        await asyncio.wait_for(self._open.wait(), 30)
        self.channel.send(message if isinstance(message, str) else json.dumps(message))
        return time.perf_counter()

    def of_type(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e.get("type") == kind]

    async def wait_for(self, predicate, timeout: float = 30.0) -> tuple[float, dict]:
        """The first event (arrival time, event) for which ``predicate(event)``, waiting up to ``timeout``."""
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            for t, e in self.events[seen:]:
                if predicate(e):
                    return t, e
            seen = len(self.events)
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no such event in {timeout} s; last events: {[e for _, e in self.events[-3:]]}")
            self._new_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), left)

    async def wait_frames(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.perf_counter() + timeout
        while len(self.frames) < n:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(self.frames)} frames in {timeout} s, expected {n}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.pc is not None:
            await self.pc.close()


class HTTPError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def _texts(event: dict) -> list[str]:
    return [p["text"] for p in event.get("prompts", [])]


async def bench(
    url: str, prompts: list[str], *, seconds: float, switch_every: float, seed: int = 0, token: str | None = None
) -> dict:
    """Connect, switch prompts every ``switch_every`` s (cycling through ``prompts[1:]`` then back),
    receive for ``seconds``; returns the measurements (``bench``'s JSON style: summaries in ms)."""
    from arvid.bench.stats import summarize

    aiohttp = require("aiohttp", purpose="arvid serve-bench")
    async with aiohttp.ClientSession() as http, http.get(url.rstrip("/") + "/health") as r:
        health = await r.json()
    fps = health.get("fps", 16)
    c = Client(url, token=token)
    await c.connect([prompts[0]], seed=seed)
    try:
        await c.wait_frames(1, timeout=120)
        t_first = c.frames[0][0]
        t_end = t_first + seconds
        switches: list[tuple[float, str]] = []
        k = 0
        schedule = [*prompts[1:], prompts[0]] if len(prompts) > 1 else []
        while time.perf_counter() < t_end:
            await asyncio.sleep(min(switch_every, max(0.0, t_end - time.perf_counter())))
            if schedule and time.perf_counter() < t_end - 0.5:
                text = schedule[k % len(schedule)]
                k += 1
                switches.append((await c.send({"prompts": [{"text": text, "weight": 1.0}]}), text))
        await asyncio.sleep(0.5)  # events of the last switch
    finally:
        await c.close()
    times = [t for t, _, _ in c.frames if t <= t_end]
    gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
    p2p = []
    for sent, text in switches:
        hit = next((t for t, e in c.events if t > sent and e.get("type") == "chunk" and _texts(e) == [text]), None)
        if hit is not None:
            p2p.append((hit - sent) * 1e3)
    chunks = [e for _, e in c.events if e.get("type") == "chunk"]
    period_ms = 1e3 / fps
    return {
        "kind": "serve",
        "url": url,
        "client": _client_environment(),
        "server": health,
        "seconds": seconds,
        "fps_target": fps,
        "time_to_first_frame_ms": (t_first - c.t_offer) * 1e3,
        "frames_received": len(times),
        "received_fps": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0,
        "inter_frame_ms": summarize(gaps) if gaps else None,
        # a stall: a gap over two frame periods (a frame that came a whole period late or more)
        "stalls": sum(g > 2 * period_ms for g in gaps),
        "switches_sent": len(switches),
        "switches_seen": len(p2p),
        "prompt_to_pixel_ms": summarize(p2p) if p2p else None,
        "server_chunk_ms": {
            "dit": summarize([e["dit_ms"] for e in chunks]) if chunks else None,
            "vae": summarize([e["vae_ms"] for e in chunks]) if chunks else None,
        },
        "realtime_chunks": sum(bool(e.get("realtime")) for e in chunks),
        "chunks": len(chunks),
    }


def _client_environment() -> dict:
    """Where the measuring client ran: versions and the git state, as ``bench``'s JSON records them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from arvid.bench.env import git_state

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "host": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{name: ver(name) for name in ("arvid", "aiortc", "aiohttp", "av")},
        **git_state(),
    }


def format_report(r: dict) -> str:
    """The measurements as ``arvid bench``-style text lines."""

    def pct(s: dict | None) -> str:
        return "-" if s is None else f"p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms (n={s['n']})"

    lines = [
        f"serve-bench {r['url']}: {r['seconds']:g} s received, target {r['fps_target']} FPS",
        f"  time to first frame   {r['time_to_first_frame_ms']:.0f} ms (offer posted -> first frame decoded)",
        f"  received FPS          {r['received_fps']:.2f} ({r['frames_received']} frames)",
        f"  inter-frame interval  {pct(r['inter_frame_ms'])}",
        f"  stalls                {r['stalls']} (gaps over 2 frame periods)",
        f"  prompt-to-pixel       {pct(r['prompt_to_pixel_ms'])}; {r['switches_seen']} of {r['switches_sent']} seen",
        f"  server chunk DiT      {pct(r['server_chunk_ms']['dit'])}",
        f"  server chunk VAE      {pct(r['server_chunk_ms']['vae'])}",
        f"  real-time chunks      {r['realtime_chunks']} of {r['chunks']}",
    ]
    return "\n".join(lines)
