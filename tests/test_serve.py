"""arvid serve end to end: a real server (tiny preset, CPU, two workers) on 127.0.0.1 in this process,
aiortc clients posting Daydream Scope's offer, headless Chromium (Debian's chromium + chromium-driver,
installed by .ci/run) playing the page through selenium, and the command itself in a scratch directory
(health, metrics, SIGTERM). One in-process server for the module: loading it is the slow part."""

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("aiortc")
pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

from arvid.cli import build_parser
from arvid.commands.serve import build_generator
from arvid.serve.app import Server, run
from arvid.serve.client import Client, HTTPError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
A, B = "a red fox running through fresh snow", "a lighthouse in a storm at night"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A Server on its own event loop in a thread (clients run on the test's loop, as another process would)."""

    def __init__(self, server: Server) -> None:
        self.server, self.port = server, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(run(self.server, "127.0.0.1", self.port, self.stop))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if get(self.url + "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout} s: {self.server.load_error}")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(15)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def serve_args(*extra: str):
    return build_parser().parse_args(["serve", "--preset", "tiny", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def served():
    latents: dict[str, list] = {}

    def observe(name, event, chunk):
        latents.setdefault(name, []).append((dict(event), chunk.clone()))

    # chunks of one latent frame (4 video frames): on the CPU the tiny VAE's decode is the slow stage, and
    # the tests wait for chunk boundaries; the settings are LongLive's otherwise (sink 3, attention 12)
    args = serve_args("--chunk-frames", "1")
    server = Server(lambda device: build_generator(args, device), ["cpu", "cpu"], fps=16, observer=observe)
    r = Running(server)
    r.latents = latents
    r.wait_ready()
    yield r
    r.close()


def test_health_metrics_and_page(served):
    status, body, _ = get(served.url + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ready" and health["max_sessions"] == 2
    status, body, ctype = get(served.url + "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("arvid_chunk_seconds", "arvid_frames_sent_total", "arvid_recache_chunk_seconds",
                 "arvid_prompt_to_pixel_seconds", "arvid_sessions", "arvid_queue_depth"):  # fmt: skip
        assert name in text, name
    status, body, ctype = get(served.url + "/")
    page = body.decode()
    assert status == 200 and ctype.startswith("text/html") and "<video" in page
    assert "src=" not in page and "://" not in page.split("<script>", 1)[1]  # nothing fetched: works offline


def test_frames_switch_reset_pause_and_latents_equal_generate(served):
    """A fixed seed and schedule: the served chunks' latents equal ``Pipeline.generate``'s with the switch
    where it landed (the same generator, the same noise, the same re-cache). Bad messages on the way get
    error events, change nothing, and the frames keep coming; ``reset_cache`` restarts the stream as
    ``generate`` starts it; ``paused`` stops the chunks and unpausing brings them back."""

    async def go():
        c = Client(served.url)
        answer = await c.connect([{"text": A, "weight": 1.0}], seed=7, path="/api/v1/webrtc/offer")  # Scope's path
        await c.wait_for(lambda e: e.get("type") == "chunk")
        for bad in ("not json", {"prompts": []}, {"paused": "yes"},
                    {"transition": {"target_prompts": [B], "num_steps": 0}}):  # fmt: skip
            await c.send(bad)
        await c.send({"prompts": [{"text": B, "weight": 1.0}]})
        await c.wait_for(lambda e: len(c.of_type("error")) >= 4)
        frames_at_errors = len(c.frames)
        _, hit = await c.wait_for(lambda e: e.get("type") == "chunk" and e["prompts"][0]["text"] == B)
        await c.wait_for(lambda e: e.get("type") == "chunk" and e["index"] == hit["index"] + 1)
        # reset_cache: a new stream from the current prompt (its latents are checked below)
        await c.send({"reset_cache": True})
        await c.wait_for(lambda e: e.get("type") == "chunk" and e["stream"] == 1 and e["frame_start"] == 2)
        # paused: the DiT finishes the chunk it is on, if any, and generates no more; unpaused, it goes on
        await c.send({"paused": True})
        await c.wait_for(lambda e: e.get("type") == "ack" and e["paused"])
        generated = served.latents[answer["sessionId"]]  # the observer's list, one entry per DiT chunk
        at_pause = len(generated)
        await asyncio.sleep(1.5)
        during_pause = len(generated) - at_pause
        shown = len(c.of_type("chunk"))
        await c.send({"paused": False})
        await c.wait_for(lambda e: len(c.of_type("chunk")) > shown)
        await c.close()
        return answer["sessionId"], hit, c, frames_at_errors, during_pause

    sid, hit, client, frames_at_errors, during_pause = asyncio.run(go())
    assert during_pause <= 1, f"{during_pause} chunks generated while paused"
    pipe = served.server.slots[0].pipe
    chunk = pipe.stream_config.chunk_frames
    assert client.frames[-1][1:] == tuple(reversed(pipe.preset.video_size))  # (width, height) of the video
    errors = [x["message"] for x in client.of_type("error")]
    assert len(errors) == 4 and "not JSON" in errors[0] and "num_steps" in errors[3]
    assert len(client.frames) >= frames_at_errors + 10  # the stream went on after the bad messages
    assert hit["recached"] and hit["frame_start"] == hit["index"] * chunk
    assert all(k in hit for k in ("dit_ms", "vae_ms", "prompts", "index", "recached", "prompt_to_pixel_ms"))
    events = [e for e, _ in served.latents[sid]]
    n = hit["index"] + 2
    assert [e["recached"] for e in events[:n]] == [i == hit["index"] for i in range(n)]
    got = torch.cat([x for _, x in served.latents[sid][:n]], dim=1)
    wait_free(served)  # the session's generator is free again
    want = pipe.generate([A, B], switch_frames=[hit["frame_start"]], num_frames=n * chunk, seed=7, decode=False)
    assert torch.equal(got.cpu(), want.latents)
    # after reset_cache the stream is generate's from the start, under the prompt then current
    restarted = [x for e, x in served.latents[sid] if e["stream"] == 1][:3]
    want = pipe.generate(B, num_frames=3 * chunk, seed=7, decode=False)
    assert torch.equal(torch.cat(restarted, dim=1).cpu(), want.latents)


def wait_free(served, timeout: float = 5.0) -> float:
    """Seconds until no session is open (a client that left frees its session within seconds)."""
    t0 = time.monotonic()
    while served.server.sessions:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"sessions still open after {timeout} s: {list(served.server.sessions)}")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_sessions_are_limited_a_third_client_gets_503_and_a_freed_slot_serves_again(served):
    """Two CPU workers: two clients are served, a third gets 503 with a JSON reason (not a hang), and a
    client after one has left is served."""

    async def patch(path, body):
        import aiohttp

        async with aiohttp.ClientSession() as http, http.patch(served.url + path, json=body) as r:
            return r.status

    async def go():
        a, b = Client(served.url), Client(served.url)
        sid = (await a.connect([A]))["sessionId"]
        # trickled ICE candidates (Scope's PATCH): accepted for a session, 404 for none, 400 for garbage
        line = "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host"
        assert await patch(f"/api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": line, "sdpMid": "0",
                                                                            "sdpMLineIndex": 0}]}) == 204  # fmt: skip
        assert await patch("/offer/nope", {"candidate": line}) == 404
        assert await patch(f"/offer/{sid}", {"candidates": [{"candidate": "bogus"}]}) == 400
        await b.connect([B])
        # a transition over 2 chunks (slerp): the first step re-caches, the target shows throughout
        await b.send({"transition": {"target_prompts": [{"text": A, "weight": 1}], "num_steps": 2,
                                     "temporal_interpolation_method": "slerp"}})  # fmt: skip
        await asyncio.gather(a.wait_frames(1), b.wait_frames(1))
        c = Client(served.url)
        t0 = time.perf_counter()
        with pytest.raises(HTTPError) as refused:
            await c.connect([A])
        refused_s = time.perf_counter() - t0
        await a.close()
        t0 = time.perf_counter()
        while len(served.server.sessions) > 1:
            assert time.perf_counter() - t0 < 5, "a client that left did not free its session within 5 s"
            await asyncio.sleep(0.05)
        freed_s = time.perf_counter() - t0
        d = Client(served.url)
        await d.connect([A])
        await d.wait_frames(1)
        _, step = await b.wait_for(lambda e: e.get("type") == "chunk" and e["prompts"][0]["text"] == A)
        await asyncio.gather(b.close(), d.close())
        return refused.value, refused_s, freed_s, step

    refused, refused_s, freed_s, step = asyncio.run(go())
    assert step["recached"] and step["transition_left"] == 1
    assert refused.status == 503 and refused.body["error"] == "busy" and "in use" in refused.body["message"]
    assert refused_s < 5
    print(f"503 in {refused_s:.2f} s; a left session freed in {freed_s:.2f} s")
    wait_free(served)
    assert b"arvid_sessions_rejected_total 1.0" in get(served.url + "/metrics")[1]


def test_serve_bench_measures_a_running_server(served):
    """``arvid serve-bench``'s client on the tiny CPU server: every number of its JSON is there and sane."""
    from arvid.serve.client import bench, format_report

    r = asyncio.run(bench(served.url, [A, B], seconds=2.5, switch_every=0.8, seed=1))
    assert r["frames_received"] > 5 and r["received_fps"] > 0 and r["time_to_first_frame_ms"] > 0
    assert r["inter_frame_ms"]["p50"] > 0 and r["switches_sent"] >= 1 and r["chunks"] >= 1
    assert r["server"]["status"] == "ready" and r["fps_target"] == 16
    text = format_report(r)
    assert "prompt-to-pixel" in text and "inter-frame interval" in text
    json.dumps(r)  # the --json file
    wait_free(served)


def test_generation_waits_for_a_slow_client_and_overlaps_dit_with_decode(served):
    """No WebRTC: a session whose frames nobody takes stops generating once its bounded buffer is full
    (memory stays bounded), and the DiT of chunk i+1 ran while chunk i was being decoded."""
    from arvid.serve.control import WeightedPrompt
    from arvid.serve.worker import StreamSession

    slot = served.server.slots[1]
    assert slot.session is None
    slot.session = "held by this test"  # no client may take this generator meanwhile
    chunks = []
    s = StreamSession(slot.pipe, [WeightedPrompt(A, 1.0)], seed=0, fps=16, observer=lambda n, e, x: chunks.append(e))
    try:
        s.start()
        deadline = time.monotonic() + 20
        while not s.frames.full():
            assert time.monotonic() < deadline and s.error is None, s.error
            time.sleep(0.05)
        # waiting: the count stops growing while nobody takes frames (a generator that did not wait makes
        # a chunk every few tenths of a second here)
        made, stable_since = len(chunks), time.monotonic()
        while time.monotonic() - stable_since < 1.0:
            assert time.monotonic() < deadline, f"still generating with a full buffer: {len(chunks)} chunks"
            if len(chunks) != made:
                made, stable_since = len(chunks), time.monotonic()
            time.sleep(0.05)
        # bounded: the buffer's frames, one chunk being decoded or handed over, one finished by the DiT
        assert made <= 3 + s.frames.maxsize // 4, made
        for _ in range(s.frames.maxsize * 3):  # drain three buffers' worth: generation goes on
            s.frames.get(timeout=20)
        assert len(chunks) > made
    finally:
        s.stop()
        slot.session = None
    decoded = [e for e in chunks if "_vae_span" in e]
    overlaps = sum(
        nxt["_dit_span"][0] < cur["_vae_span"][1] and cur["_vae_span"][0] < nxt["_dit_span"][1]
        for cur, nxt in itertools.pairwise(decoded)
    )
    assert overlaps >= 1, "no DiT ran while the previous chunk was decoded"


def test_offer_checks_body_and_token():
    """Bad offers are 400 with a reason; ``--token`` asks for the bearer token (no model needed)."""
    server = Server(lambda device: None, ["cpu"], token="s3cret", warmup=False)
    r = Running(server)
    try:
        r.wait_ready()

        def post(body, token=None):
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(r.url + "/offer", data=body.encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert post("{}")[0] == 401
        assert post("{}", "wrong")[0] == 401
        status, body = post("{}", "s3cret")
        assert status == 400 and "sdp" in body["message"]
        status, body = post(json.dumps({"sdp": "v=0", "type": "offer", "initialParameters": {}}), "s3cret")
        assert status == 400 and "initialParameters.prompts" in body["message"]
        status, body = post("not json", "s3cret")
        assert status == 400
    finally:
        r.close()


CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.mark.slow
def test_the_command_listens_at_once_and_stops_on_sigterm_without_a_traceback(tmp_path):
    """``arvid serve`` from a scratch directory: /health answers (503 "loading" until the model is loaded
    and warmed up: the in-process server above covers "ready"), /metrics has the arvid_ metrics, and
    SIGTERM ends it within seconds, status 0, no traceback, even while the model is still loading."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    arvid = str(Path(sys.executable).parent / "arvid")  # the installed command, as a user runs it
    cmd = [arvid, "serve", "--preset", "tiny", "--device", "cpu", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                status, body, _ = get(url + "/health")
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not listening in 60 s"
            time.sleep(0.1)
        health = json.loads(body)
        assert (status, health["status"]) in ((503, "loading"), (200, "ready")), health
        metrics = get(url + "/metrics")[1].decode()
        assert "arvid_ready" in metrics and "arvid_sessions" in metrics
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped (SIGTERM)" in err
    assert stopped_s < 5, f"SIGTERM took {stopped_s:.1f} s"
    print(f"SIGTERM -> exit in {stopped_s:.2f} s ({health['status']})")
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


@pytest.mark.slow
def test_headless_chromium_plays_the_page_and_a_typed_prompt_shows(served, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMEDRIVER).exists() and (shutil.which("chromium") or shutil.which("chromium-browser"))):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ["SE_AVOID_STATS"] = "true"  # Selenium Manager would otherwise reach the network
    r = served
    opts = webdriver.ChromeOptions()
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
             "--autoplay-policy=no-user-gesture-required", "--window-size=1000,1000")  # fmt: skip
    for flag in flags:
        opts.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(30)
        driver.get(r.url + "/")
        box = driver.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(A)
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 45, poll_frequency=0.2)
        wait.until(lambda d: d.execute_script("return document.getElementById('video').videoWidth") > 0)
        t1 = driver.execute_script("return document.getElementById('video').currentTime")
        wait.until(lambda d: d.execute_script("return document.getElementById('video').currentTime") > t1 + 0.25)
        box.clear()
        box.send_keys(B, Keys.ENTER)

        def shown(d):
            last = d.execute_script("return document.body.dataset.lastEvent")
            return last and json.loads(last).get("prompts", [{}])[0].get("text") == B

        wait.until(shown)
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        print(f"screenshot: {shot}")
        assert "prompt-to-pixel" in driver.find_element(By.ID, "stats").text
        driver.find_element(By.ID, "stop").click()  # the page closes its connection: the session ends
        print(f"the browser's session freed {wait_free(served, 10):.2f} s after Stop")
    finally:
        if driver is not None:
            driver.quit()
