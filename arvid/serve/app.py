"""The server: aiohttp routes, WebRTC sessions (aiortc), the paced video track.

aiohttp rather than FastAPI + uvicorn: aiortc is asyncio and is itself built and shown on aiohttp,
so one library serves the page, the offer, ``/health`` and ``/metrics`` on the loop aiortc runs on;
its ``AppRunner`` starts and stops in-process (the tests run a real server on a free port without a
subprocess) and arvid keeps the signal handling (SIGTERM) instead of uvicorn's; and it is three
packages fewer (no starlette, pydantic, uvicorn).

Routes: ``GET /`` (the page), ``POST /offer`` and Scope's ``POST /api/v1/webrtc/offer`` (the SDP
offer/answer), ``PATCH`` on either ``/{session_id}`` (trickled ICE candidates), ``GET /health``, ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arvid.runtime.optional import require

from .control import ControlError, parse_message, parse_prompts
from .metrics import Metrics

log = logging.getLogger("arvid.serve")
STATIC = Path(__file__).parent / "static"
CLOCK_RATE = 90000  # RTP's video clock: pts are in 1/90000 s
POLL_S = 0.002  # how often the track looks at an empty frame buffer (a bound on the pacing error)
MAX_BODY = 1 << 20  # bytes of an offer's JSON body
# A client that vanishes (tab killed, network gone) sends nothing to say so; ICE consent checks (RFC 7675)
# find out after CONSENT_FAILURES missed checks. aioice checks every 5 s, so a dead client would hold its
# GPU for ~30 s; every second, it is freed within ~6-8 s (one STUN request a second: nothing to the link).
CONSENT_INTERVAL_S = 1


@dataclass
class Slot:
    """One generator that serves one session at a time (one per GPU by default)."""

    name: str  # e.g. "cuda:0"
    pipe: Any = None  # the Pipeline, once loaded
    session: Session | object | None = None  # None: free; RESERVED while an offer builds its session


RESERVED = object()  # a slot taken by an offer whose session is still being built


@dataclass
class Session:
    """One client: its peer connection, its stream, its data channel."""

    id: str
    slot: Slot
    pc: Any
    stream: Any  # worker.StreamSession
    channel: Any = None
    closed: bool = False
    controls: asyncio.Lock = field(default_factory=asyncio.Lock)  # one control message applied at a time
    sent: int = 0


class Server:
    """The state behind the routes: slots (generators), sessions, metrics.

    Parameters
    ----------
    load : ``load(device) -> Pipeline`` (``arvid.commands.serve.build_generator`` bound to the command's arguments).
    devices : one slot per entry (``["cuda:0", "cuda:1"]``, ``["cpu"]``); sessions go to a free one.
    fps : video frame rate of the stream.
    seed : default noise seed (an offer's ``initialParameters.seed`` overrides it).
    token : bearer token ``/offer`` asks for (None: no check).
    observer : test hook passed to each :class:`~arvid.serve.worker.StreamSession`.
    ice_servers : STUN / TURN URLs for clients behind NAT (``stun:host:port``). None by default: aiortc
        would otherwise ask Google's public STUN server, and a machine without internet waits on it.
    """

    def __init__(
        self,
        load: Callable[[str], Any],
        devices: list[str],
        *,
        fps: int = 16,
        seed: int = 0,
        token: str | None = None,
        warmup: bool = True,
        observer: Callable | None = None,
        ice_servers: list[str] = (),
    ) -> None:
        self.ice_servers = list(ice_servers)
        self.load, self.fps, self.seed, self.token = load, fps, seed, token
        self.warmup, self.observer = warmup, observer
        self.slots = [Slot(d) for d in devices]
        self.sessions: dict[str, Session] = {}
        self.metrics = Metrics()
        self.metrics.max_sessions.set(len(self.slots))
        self.ready = False
        self.load_error: str | None = None
        self.warmup_s: float | None = None
        self._tasks: set[asyncio.Task] = set()  # running callbacks' tasks, held so none is collected mid-way

    def spawn(self, coro) -> None:
        """Run ``coro`` as a task of the server (from aiortc's synchronous callbacks)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- loading ----------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load and warm up every slot's generator (a worker thread; ``/health`` says ready after)."""
        from .worker import warm_up

        try:
            t0 = time.perf_counter()
            for slot in self.slots:
                slot.pipe = self.load(slot.name)
                if self.warmup:
                    warm_up(slot.pipe)
            self.warmup_s = time.perf_counter() - t0
            self.ready = True
            self.metrics.ready.set(1)
        except Exception as e:  # /health says why; the log has the traceback
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("loading the model failed")

    # -- routes -----------------------------------------------------------------------------------
    def app(self):
        web = require("aiohttp.web", purpose="arvid serve")
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self.index)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_route)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/api/v1/webrtc/offer", self.offer)  # Daydream Scope's path
        # trickle ICE: candidates the client finds after its offer (Scope's clients send them this way)
        app.router.add_patch("/offer/{session_id}", self.candidates)
        app.router.add_patch("/api/v1/webrtc/offer/{session_id}", self.candidates)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def index(self, request):
        web = sys.modules["aiohttp.web"]
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request):
        web = sys.modules["aiohttp.web"]
        body = {
            "status": "ready" if self.ready else ("error" if self.load_error else "loading"),
            "sessions": len(self.sessions),
            "max_sessions": len(self.slots),
            "workers": [s.name for s in self.slots],
            "fps": self.fps,
        }
        if self.load_error:
            body["error"] = self.load_error
        if self.warmup_s is not None:
            body["load_and_warmup_s"] = round(self.warmup_s, 3)
        return web.json_response(body, status=200 if self.ready else 503)

    async def metrics_route(self, request):
        web = sys.modules["aiohttp.web"]
        self.metrics.queue_depth.set(sum(s.stream.frames.qsize() for s in self.sessions.values()))
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    def _refuse(self, status: int, reason: str, message: str):
        web = sys.modules["aiohttp.web"]
        return web.json_response({"error": reason, "message": message}, status=status)

    async def offer(self, request):
        """Scope's ``{sdp, type, initialParameters: {prompts: [{text, weight}], seed?}}`` -> ``{sdp, type}``."""
        aiortc = require("aiortc", purpose="arvid serve")
        sys.modules["aioice.ice"].CONSENT_INTERVAL = CONSENT_INTERVAL_S  # aiortc imported aioice
        if self.token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                return self._refuse(401, "unauthorized", "this server needs Authorization: Bearer <token>")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._refuse(400, "bad_request", "the body must be JSON {sdp, type, initialParameters}")
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
            return self._refuse(400, "bad_request", 'the body needs "sdp" (text) and "type": "offer"')
        params = body.get("initialParameters") or {}
        if not isinstance(params, dict):
            return self._refuse(400, "bad_request", "initialParameters must be an object")
        try:
            prompts = parse_prompts(params.get("prompts"), "initialParameters.prompts")
        except ControlError as e:
            return self._refuse(400, "bad_request", str(e))
        seed = params.get("seed", self.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**63 - 2:
            return self._refuse(400, "bad_request", f"initialParameters.seed must be an integer >= 0, got {seed!r}")
        if not self.ready:
            reason = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            return self._refuse(503, "not_ready", reason)
        slot = next((s for s in self.slots if s.session is None), None)
        if slot is None:
            self.metrics.rejected.inc()
            return self._refuse(
                503, "busy", f"all {len(self.slots)} session(s) are in use; try again when one ends (see /health)"
            )
        from .worker import StreamSession

        # the slot is taken before the first await, so two offers at once cannot both get it
        slot.session = RESERVED
        sid = uuid.uuid4().hex[:12]
        make = functools.partial(
            StreamSession, slot.pipe, prompts, seed=seed, fps=self.fps, name=sid, metrics=self.metrics,
            observer=self.observer,
        )  # fmt: skip
        try:  # encoding the prompts runs the text encoder: off the event loop
            stream = await asyncio.get_running_loop().run_in_executor(None, make)
        except ValueError as e:  # e.g. a prompt the text encoder refuses
            slot.session = None
            return self._refuse(400, "bad_request", str(e))
        except BaseException:
            slot.session = None
            raise
        pc = aiortc.RTCPeerConnection(rtc_configuration(self.ice_servers))
        session = Session(sid, slot, pc, stream)
        slot.session = session
        self.sessions[sid] = session
        self.metrics.sessions.set(len(self.sessions))
        try:
            self._wire(session)
            pc.addTrack(PacedTrack(session, self))
            await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=body["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # a malformed SDP: the client's error, and the slot is free again
            await self.close(session)
            return self._refuse(400, "bad_offer", f"the SDP offer was not accepted: {e}")
        stream.start()
        log.info("session %s on %s: %s", sid, slot.name, [p.text for p in prompts])
        web = sys.modules["aiohttp.web"]
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "sessionId": sid})

    async def candidates(self, request):
        """``PATCH /offer/{session_id}``: remote ICE candidates after the offer, as
        ``{"candidates": [{candidate, sdpMid, sdpMLineIndex}, ...]}`` or one such object; 204."""
        web = sys.modules["aiohttp.web"]
        from aiortc.sdp import candidate_from_sdp

        if self.token is not None and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), f"Bearer {self.token}".encode()
        ):
            return self._refuse(401, "unauthorized", "this server needs Authorization: Bearer <token>")
        session = self.sessions.get(request.match_info["session_id"])
        if session is None:
            return self._refuse(404, "no_session", "no such session (it ended, or the id is wrong)")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._refuse(400, "bad_request", "the body must be JSON {candidates: [...]}")
        items = body.get("candidates", [body]) if isinstance(body, dict) else None
        if not isinstance(items, list):
            return self._refuse(400, "bad_request", "candidates must be a list of {candidate, sdpMid, sdpMLineIndex}")
        for i, item in enumerate(items):
            text = item.get("candidate") if isinstance(item, dict) else None
            if not isinstance(text, str):
                return self._refuse(400, "bad_request", f"candidates[{i}].candidate must be the candidate line")
            if not text:  # the end-of-candidates marker
                continue
            line = text.split(":", 1)[1] if text.startswith("candidate:") else text
            bits = line.split()
            # "foundation component transport priority address port typ type ...": aiortc's parser asserts
            # this shape (an AssertionError would be a 500), so it is checked here first
            if len(bits) < 8 or bits[6] != "typ" or not all(bits[k].isdigit() for k in (1, 3, 5)):
                return self._refuse(400, "bad_request", f"candidates[{i}] is not an ICE candidate line: {text!r}")
            try:
                cand = candidate_from_sdp(line)
            except ValueError as e:
                return self._refuse(400, "bad_request", f"candidates[{i}] is not an ICE candidate line: {e}")
            cand.sdpMid, cand.sdpMLineIndex = item.get("sdpMid"), item.get("sdpMLineIndex")
            if cand.sdpMid is None and cand.sdpMLineIndex is None:
                return self._refuse(400, "bad_request", f"candidates[{i}] needs sdpMid or sdpMLineIndex")
            await session.pc.addIceCandidate(cand)
        return web.Response(status=204)

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("datachannel")
        def on_datachannel(channel):
            if channel.label != "parameters":
                return
            session.channel = channel

            @channel.on("message")
            def on_message(message):
                self.spawn(self._control(session, message))

            @channel.on("close")
            def on_close():
                self.spawn(self.close(session))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close(session)

    async def _control(self, session: Session, message) -> None:
        async with session.controls:
            try:
                c = parse_message(message)
                # encoding a prompt runs the text encoder: off the event loop
                await asyncio.get_running_loop().run_in_executor(None, session.stream.apply, c)
            except ValueError as e:  # a ControlError, or e.g. a prompt the text encoder refuses
                self.metrics.errors.inc()
                self.send(session, {"type": "error", "message": str(e)})
                return
            except Exception as e:  # not the client's: logged with its traceback, and the client told
                log.exception("session %s: a control message failed", session.id)
                self.metrics.errors.inc()
                self.send(session, {"type": "error", "message": f"the server failed to apply it: {e}"})
                return
            self.send(session, {"type": "ack", "applied": _applied(c), "paused": session.stream.paused})

    def send(self, session: Session, event: dict) -> None:
        ch = session.channel
        if ch is not None and ch.readyState == "open":
            ch.send(json.dumps({k: v for k, v in event.items() if not k.startswith("_")}))

    async def close(self, session: Session) -> None:
        """End a session and free its slot (idempotent)."""
        if session.closed:
            return
        session.closed = True
        # no time limit: the slot's generator is free only once both threads have ended (a chunk in
        # progress finishes first), or the next session would run on it beside the old one
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(session.stream.stop, None))
        # freed together: a session not in the list (/health, /metrics) has a free slot
        session.slot.session = None
        self.sessions.pop(session.id, None)
        self.metrics.sessions.set(len(self.sessions))
        await session.pc.close()
        log.info("session %s ended (%d frames sent)", session.id, session.sent)

    async def _on_shutdown(self, app) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self.sessions.values())))


def rtc_configuration(urls: list[str]):
    """aiortc's configuration with exactly these ICE servers (none: host candidates only, no lookup)."""
    aiortc = require("aiortc", purpose="arvid serve")
    return aiortc.RTCConfiguration(iceServers=[aiortc.RTCIceServer(urls=u) for u in urls])


def _applied(c) -> list[str]:
    out = []
    if c.prompts is not None:
        out.append("transition" if c.transition_steps else "prompts")
    if c.paused is not None:
        out.append("paused")
    if c.reset_cache:
        out.append("reset_cache")
    return out


def _make_track_class():
    """The track class, made on first use: its base class is aiortc's, which is imported lazily."""
    MediaStreamTrack = require("aiortc", "MediaStreamTrack", purpose="arvid serve")
    av = require("av", purpose="arvid serve's video frames")

    class Paced(MediaStreamTrack):
        """The video track: frames from the session's buffer at the video's FPS.

        The clock starts at the first frame. A frame that is not decoded when it is due is a stall:
        the track waits for it and moves its clock on (the stream then runs at generation's pace,
        and the chunk events say ``realtime: false``). While paused the clock moves on too, so the
        frames after a pause are not sent in a burst.
        """

        kind = "video"

        def __init__(self, session: Session, server: Server) -> None:
            super().__init__()
            self.session, self.server = session, server
            self.period = 1.0 / server.fps
            self.n = 0
            self.t0: float | None = None

        async def recv(self):
            stream = self.session.stream
            loop = asyncio.get_running_loop()
            waited = False
            while True:
                if self.session.closed or stream.error is not None:
                    if stream.error is not None:
                        why = f"generation failed: {stream.error}"
                        self.server.send(self.session, {"type": "error", "message": why})
                        self.server.spawn(self.server.close(self.session))
                    self.stop()
                    raise require("aiortc.mediastreams", "MediaStreamError", purpose="arvid serve")
                try:
                    frame = stream.frames.get_nowait()
                    break
                except Exception:  # queue.Empty
                    waited = True
                    await asyncio.sleep(POLL_S)
            now = loop.time()
            if self.t0 is None:
                self.t0 = now
            due = self.t0 + self.n * self.period
            if now < due:
                await asyncio.sleep(due - now)
            elif waited and now - due > self.period:  # late: a stall unless paused; the clock moves on
                if not stream.paused:
                    self.server.metrics.stalls.inc()
                self.t0 = now - self.n * self.period
            vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            vf.pts = self.n * (CLOCK_RATE // self.server.fps)
            vf.time_base = fractions.Fraction(1, CLOCK_RATE)
            self.n += 1
            self.session.sent += 1
            self.server.metrics.frames_sent.inc()
            if frame.event is not None:
                ev = frame.event
                at = ev.get("_prompt_at")
                if at is not None:
                    ev["prompt_to_pixel_ms"] = round((time.perf_counter() - at) * 1e3, 3)
                    self.server.metrics.prompt_to_pixel.observe(ev["prompt_to_pixel_ms"] / 1e3)
                ev["queue_depth"] = stream.frames.qsize()
                self.server.send(self.session, ev)
            return vf

    return Paced


_PACED: type | None = None


def PacedTrack(session: Session, server: Server):
    global _PACED
    if _PACED is None:
        _PACED = _make_track_class()
    return _PACED(session, server)


async def run(server: Server, host: str, port: int, stop: asyncio.Event, on_ready: Callable | None = None) -> None:
    """Serve until ``stop`` is set: listen at once, load the model in a thread (``/health`` says
    when it is ready), then on ``stop`` close every session and the listener."""
    web = require("aiohttp.web", purpose="arvid serve")
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        if on_ready is not None:
            on_ready(runner)
        # a daemon thread, not the loop's executor: asyncio.run would wait for the executor's threads at
        # exit, so a SIGTERM during a minutes-long load would wait for the load
        loading = threading.Thread(target=server.load_all, name="arvid-serve-load", daemon=True)
        loading.start()
        await stop.wait()
        if loading.is_alive():
            log.info("stopping while the model loads")
    finally:
        await runner.cleanup()
