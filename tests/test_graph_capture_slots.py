"""Which ring slots a captured CUDA-graph body writes, checked on the CPU with stand-in CUDA objects.

A graph bakes in every host value its body used at capture time and reads device tensors at each
replay. The stand-ins below run a captured body eagerly, once, and record the ring slots it wrote
(the ring is filled with a sentinel first, so a rewrite of identical values is seen too); a replay
runs nothing and records which graph was replayed with which device write slot. Every runner that
captures is checked: ``ChunkRunner`` (the ring write's slot is a device scalar: the body must follow
the plan's device ``write_start``) and the ``aoti+graphs`` runner (the ring write is a host slice
baked into the graph: the body must write the slots of the plan its graph is keyed by).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from arvid.runtime import StreamConfig, build_model, get_preset
from arvid.runtime.attention import get_backend
from arvid.runtime.chunk_runner import ChunkRunner
from arvid.runtime.chunk_step import FunctionalChunk, FunctionalStep
from arvid.runtime.kv_cache import make_cache

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
SENTINEL = 1234.5  # exactly representable in fp32; no computed K of the tiny model lands on it


class FakeGraphs:
    """Stand-ins for torch.cuda.device / Stream / stream / current_stream / graph / CUDAGraph / synchronize."""

    def __init__(self, ring: torch.Tensor, write_start: torch.Tensor, chunk_tokens: int) -> None:
        self.ring, self.write_start, self.chunk_tokens = ring, write_start, chunk_tokens
        self.replays: list[tuple[FakeGraphs.Graph, int]] = []  # (graph, device write_start at replay)
        self.captures = 0
        self.devices: list[torch.device] = []  # the device each capture ran under (the runner's tensors')

    class Stream:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    def install(self, monkeypatch) -> None:
        fake = self

        class Graph:
            def __init__(self) -> None:
                self.written: list[int] | None = None  # token slots the captured body wrote
                self.write_start_at_capture = -1

            def pool(self):
                return ("pool", id(self))

            def replay(self) -> None:
                fake.replays.append((self, int(fake.write_start.item())))

        @contextlib.contextmanager
        def graph(g, pool=None, **kwargs):
            saved = fake.ring.clone()
            fake.ring.fill_(SENTINEL)
            g.write_start_at_capture = int(fake.write_start.item())
            yield g
            touched = (fake.ring != SENTINEL).flatten(3).any(-1).any(1).any(0)  # [S] over layers, batch, heads
            g.written = touched.nonzero().flatten().tolist()
            fake.ring.copy_(torch.where(touched[None, None, :, None, None], fake.ring, saved))
            fake.captures += 1

        FakeGraphs.Graph = Graph

        def device(d):
            fake.devices.append(d)
            return contextlib.nullcontext()

        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "Stream", FakeGraphs.Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: FakeGraphs.Stream())
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)

    def slots(self, start: int, tokens: int) -> list[int]:
        return list(range(start, start + tokens))


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


def _prompt(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return model.text_kv(torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g))


def _noise(model, stream: StreamConfig, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (1, stream.chunk_frames, model.cfg.in_dim, *HW)
    return torch.randn(shape, generator=g), [torch.randn(shape, generator=g) for _ in range(3)]


CHUNKS = 7  # fill phase (4 slots at LongLive's settings) and three evictions around the window


@pytest.mark.parametrize("granularity", ["chunk", "step"])
@pytest.mark.parametrize("up_front", [True, False])
@torch.no_grad()
def test_chunk_runner_graphs_write_the_replayed_plans_slots(model, monkeypatch, granularity, up_front):
    stream = StreamConfig()
    backend = get_backend("sdpa", "cpu", torch.float32)
    cache = make_cache(
        backend, model.cfg, stream, batch_size=1, patch_grid=(HW[0] // 2, HW[1] // 2), device="cpu", dtype=torch.float32
    )
    runner = ChunkRunner(model, cache, backend, stream, latent_size=HW, batch_size=1, granularity=granularity)
    runner.cuda_graphs = True  # the constructor refuses graphs off CUDA: the stand-ins replace CUDA here
    fake = FakeGraphs(cache.k, cache.plan_tensors.write_start, cache.chunk_tokens)
    fake.install(monkeypatch)
    runner.set_prompt(_prompt(model))
    if up_front:
        runner.capture()
    runner.prepare(CHUNKS * stream.chunk_frames)
    for ci in range(CHUNKS):
        want = cache.plan_chunk(ci * stream.chunk_frames)  # planning is pure: run_chunk makes the same plan
        before = len(fake.replays)
        runner.run_chunk(*_noise(model, stream, ci), ci * stream.chunk_frames)
        replayed = fake.replays[before:]
        assert len(replayed) == (1 if granularity == "chunk" else len(runner.scheduler) + 1)
        for graph, write_start in replayed:
            # The body follows the device write slot it saw at capture, and the replay's device slot
            # is this chunk's: so the replay writes this chunk's slots whatever slot it was captured at.
            assert graph.written == fake.slots(graph.write_start_at_capture, cache.chunk_tokens), f"chunk {ci}"
            assert write_start == want.write_start, f"chunk {ci}: replayed with device slot {write_start}"
    assert fake.captures == len(runner.graphs)
    assert fake.devices == [cache.k.device] * fake.captures  # captured on the device of the runner's tensors


@pytest.mark.parametrize("whole_chunk", [False, True])
@torch.no_grad()
def test_aoti_graph_runner_replays_write_their_own_slot(model, monkeypatch, whole_chunk):
    from arvid.export import aoti

    stream = StreamConfig()
    runner = aoti._CudaGraphRunner(
        model.cfg, stream, latent_size=HW, batch_size=1, device="cpu", dtype=torch.float32,
        step=FunctionalStep(model), chunk=FunctionalChunk(model, stream, 1) if whole_chunk else None,
        rope_positions=model.rope.positions,
    )  # fmt: skip
    fake = FakeGraphs(runner.k, runner.plan_tensors.write_start, runner.planner.chunk_tokens)
    fake.install(monkeypatch)
    runner.set_prompt(_prompt(model))
    runner.prepare(CHUNKS * stream.chunk_frames)
    for ci in range(CHUNKS):
        want = runner.planner.plan_chunk(ci * stream.chunk_frames)
        before = len(fake.replays)
        runner.run_chunk(*_noise(model, stream, ci), ci * stream.chunk_frames)
        ((graph, _),) = fake.replays[before:]
        # The slice start is a host value baked into the graph: it must be the replayed plan's.
        assert graph.written == fake.slots(want.write_start, runner.planner.chunk_tokens), (
            f"chunk {ci} (slot at token {want.write_start}) replayed a graph writing tokens "
            f"{graph.written[0]}..{graph.written[-1]}"
        )
        assert (runner.planner.filled, runner.planner.next_slot) == (want.filled_after, want.next_slot_after)
    assert fake.captures == len(runner.graphs) == stream.slot_chunks
    assert fake.devices == [runner.device] * fake.captures


@pytest.mark.gpu
@torch.no_grad()
def test_aoti_graph_runner_on_cuda_matches_the_uncaptured_runner():
    # The real capture of what aoti+graphs runs (over the functional step: no package export needed):
    # every replay must give the latents of the same runner without graphs, evictions included.
    from arvid.export import aoti
    from arvid.runtime.chunk_runner import GraphRunner

    model = build_model(TINY.model, seed=0).cuda()
    stream = StreamConfig()
    kwargs = dict(latent_size=HW, batch_size=1, device="cuda", dtype=torch.float32, step=FunctionalStep(model))
    runners = [
        cls(model.cfg, stream, rope_positions=model.rope.positions, **kwargs)
        for cls in (GraphRunner, aoti._CudaGraphRunner)
    ]
    g = torch.Generator().manual_seed(0)
    text_kv = model.text_kv(torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g).cuda())
    outs: list[list[torch.Tensor]] = [[], []]
    for r, runner in enumerate(runners):
        runner.set_prompt(text_kv)
        runner.prepare(CHUNKS * stream.chunk_frames)
        for ci in range(CHUNKS):
            noise, renoise = _noise(model, stream, ci)
            x0 = runner.run_chunk(noise.cuda(), [x.cuda() for x in renoise], ci * stream.chunk_frames)
            outs[r].append(x0.clone())
    for ci, (a, b) in enumerate(zip(*outs, strict=True)):
        assert torch.allclose(b, a, atol=1e-4, rtol=1e-4), f"chunk {ci}: max |diff| {(b - a).abs().max().item():.3e}"
