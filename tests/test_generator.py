"""Streaming generator, ring-buffer cache and the eager baseline on the tiny preset (fp32)."""

import pytest
import torch
from conftest import assert_close

from arvid.runtime import FlowMatchScheduler, StreamConfig, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


def _inputs(frames, prompts=1, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, frames, TINY.model.in_dim, *HW, generator=g)
    embeds = [torch.randn(batch, TINY.model.text_len, TINY.model.text_dim, generator=g) for _ in range(prompts)]
    return noise, embeds


def _run(model, backend, frames, switches=(), stream=None, batch=1, seed=0):
    noise, embeds = _inputs(frames, len(switches) + 1, batch, seed)
    gen = StreamingGenerator(model, stream, latent_size=HW, batch_size=batch, backend=backend)
    return gen.generate(noise, embeds, switches, generator=torch.Generator().manual_seed(seed + 1))


def test_scheduler_warped_steps():
    s = FlowMatchScheduler(StreamConfig())
    assert s.timesteps == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert s.sigmas == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-6)
    x0, noise = torch.full((2,), 2.0), torch.full((2,), -1.0)
    assert torch.allclose(s.add_noise(x0, noise, 0.25), torch.full((2,), 1.25))
    assert torch.allclose(s.flow_to_x0(torch.ones(2), noise - x0, 0.5), torch.full((2,), 2.5))


@pytest.mark.slow
@pytest.mark.parametrize("global_sink", [True, False])
@pytest.mark.parametrize(
    "frames, switches",
    [
        (36, ()),  # fill phase then four evictions
        (36, (6,)),  # switch inside the first attention span (s <= 12)
        (45, (12, 21, 33)),  # s = 12 exactly, then s > 12 twice
        (30, (3, 15)),  # switch right after the sink chunk
    ],
)
def test_ring_cache_matches_eager_baseline(model, global_sink, frames, switches):
    stream = StreamConfig(global_sink=global_sink)
    want = _run(model, "eager", frames, switches, stream)
    out = _run(model, "sdpa", frames, switches, stream)
    assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_ring_matches_baseline_batch_and_other_geometry(model):
    # sink of two chunks, chunk of 2 frames, window of 3 chunks; batch of 2
    stream = StreamConfig(chunk_frames=2, sink_frames=4, attention_frames=10)
    want = _run(model, "eager", 26, (8, 16), stream, batch=2)
    out = _run(model, "sdpa", 26, (8, 16), stream, batch=2)
    assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_prompt_switch_changes_the_video_after_the_switch_only(model):
    base = _run(model, "sdpa", 24)
    noise, embeds = _inputs(24)
    other = torch.randn_like(embeds[0])
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    out = gen.generate(noise, [embeds[0], other], (15,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :15], base[:, :15])
    assert not torch.allclose(out[:, 15:], base[:, 15:])


def test_recache_with_same_prompt_is_not_a_noop(model):
    """Re-cache re-runs frames at t=0: with global_sink the K/V differ from the rolling ones only
    through the context, so the video stays close but the recache path really runs."""
    noise, embeds = _inputs(24)
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(a[0].shape[1]), with_kwargs=True)
    try:
        gen.generate(noise, [embeds[0], embeds[0]], (18,), generator=torch.Generator().manual_seed(1))
    finally:
        handle.remove()
    # 8 chunks x (4 denoising steps + 1 clean-context update) + one re-cache of the 9 window frames
    assert len(calls) == 8 * 5 + 1
    assert sorted(set(calls)) == [3, 9]


def test_ring_slots_fill_then_evict_oldest(model):
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    cache, ct = gen.executor.cache, gen.executor.cache.chunk_tokens
    slots, kv = [], []
    for ci in range(9):
        plan = cache.plan_chunk(3 * ci)
        slots.append(plan.write_start // ct)
        kv.append(plan.kv_len // ct)
        cache.commit(plan)
    assert slots == [0, 1, 2, 3, 1, 2, 3, 1, 2]  # slot 0 is the sink, never overwritten
    assert kv == [1, 2, 3, 4, 4, 4, 4, 4, 4]
    plan = cache.plan_chunk(27)
    cache.activate(plan)
    assert plan.tensors.kv_len.tolist() == [4 * ct]
    assert plan.tensors.write_start.tolist() == [3 * ct]


@pytest.mark.parametrize(
    "global_sink, switch, want",
    [
        (True, 6, (0, 6, 0, 2)),  # span starts at frame 0: rebuild from 6 frames
        (True, 12, (0, 12, 0, 4)),
        (True, 27, (18, 9, 1, 4)),  # keep sink, re-run only the 9 window frames into slots 1..3
        (False, 27, (15, 12, 0, 4)),  # clear; frame 15 becomes the sink
    ],
)
def test_recache_plans(model, global_sink, switch, want):
    gen = StreamingGenerator(model, StreamConfig(global_sink=global_sink), latent_size=HW, backend="sdpa")
    cache, ct = gen.executor.cache, gen.executor.cache.chunk_tokens
    for ci in range(switch // 3):
        cache.commit(cache.plan_chunk(3 * ci))
    plan = cache.plan_recache(switch)
    assert (plan.frame_start, plan.num_frames, plan.write_start // ct, plan.kv_len // ct) == want
    cache.commit(plan)
    # the next chunk overwrites the oldest window chunk (or keeps filling)
    nxt = cache.plan_chunk(switch)
    expect_slot = want[3] if want[3] < 4 else 1
    assert nxt.write_start // ct == expect_slot


def test_sink_is_pinned_and_recache_rules(model):
    noise, embeds = _inputs(45, prompts=2)
    st = TINY.tokens_per_frame * 3
    for global_sink in (True, False):
        gen = StreamingGenerator(model, StreamConfig(global_sink=global_sink), latent_size=HW, backend="sdpa")
        it = gen.stream(noise, embeds, (30,), generator=torch.Generator().manual_seed(1))
        next(it)
        sink = gen.executor.cache.k[:, :, :st].clone()
        for c in it:
            if c.frame_start == 27:  # the last chunk before the switch: sink still the first chunk
                assert torch.equal(gen.executor.cache.k[:, :, :st], sink)
        assert torch.equal(gen.executor.cache.k[:, :, :st], sink) == global_sink


def test_explicit_renoise_equals_generator(model):
    noise, embeds = _inputs(12)
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    g = torch.Generator().manual_seed(5)
    renoise = torch.stack([torch.stack([torch.randn(1, 3, 16, *HW, generator=g) for _ in range(3)]) for _ in range(4)])
    a = gen.generate(noise, embeds, renoise=renoise)
    b = gen.generate(noise, embeds, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(b, gen.generate(noise, embeds, generator=torch.Generator().manual_seed(5)))


@pytest.mark.slow
def test_long_run_cache_memory_is_constant(model):
    """102 chunks (306 latent frames): the cache is allocated once and never grows."""
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    noise, embeds = _inputs(306, prompts=3)
    ptrs = (gen.executor.cache.k.data_ptr(), gen.executor.cache.v.data_ptr())
    nbytes = gen.executor.cache.nbytes
    seen = 0
    for c in gen.stream(noise, embeds, (150, 240), generator=torch.Generator().manual_seed(1)):
        seen += 1
        assert (gen.executor.cache.k.data_ptr(), gen.executor.cache.v.data_ptr()) == ptrs
        assert torch.isfinite(c.latents).all()
    assert seen == 102
    assert gen.executor.cache.nbytes == nbytes == 2 * 2 * 12 * TINY.tokens_per_frame * 64 * 4


def test_bad_input_errors(model):
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    noise, embeds = _inputs(12, prompts=2)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        gen.generate(noise[:, :10], embeds[:1])
    with pytest.raises(ValueError, match="out of range"):
        gen.generate(noise, embeds, (12,))
    with pytest.raises(ValueError, match="not sorted"):
        gen.generate(noise, [embeds[0]] * 3, (9, 6))
    with pytest.raises(ValueError, match="duplicate"):
        gen.generate(noise, [embeds[0]] * 3, (6, 6))
    with pytest.raises(ValueError, match="same chunk boundary"):
        gen.generate(noise, [embeds[0]] * 3, (4, 5))
    with pytest.raises(ValueError, match="switch frames"):
        gen.generate(noise, embeds)
    with pytest.raises(ValueError, match="noise must be"):
        gen.generate(noise[..., :4], embeds[:1])
    with pytest.raises(ValueError, match="prompt 0"):
        gen.generate(noise, [torch.zeros(1, 16, 5)])
    with pytest.raises(ValueError, match="renoise must be"):
        gen.generate(noise, embeds[:1], renoise=torch.zeros(3))
    with pytest.raises(ValueError, match="unknown attention backend"):
        StreamingGenerator(model, latent_size=HW, backend="nope")
    with pytest.raises(ValueError, match="divisible"):
        StreamingGenerator(model, latent_size=(7, 8))
    with pytest.raises(ValueError, match="sink_frames"):
        StreamConfig(sink_frames=4)
    with pytest.raises(ValueError, match="attention_frames"):
        StreamConfig(attention_frames=3)


def test_stream_longer_than_the_rope_table_grows_it():
    """Absolute frame positions past the initial table: the table doubles, nothing else changes."""
    import dataclasses

    cfg = dataclasses.replace(TINY.model, rope_max_positions=16)
    small = build_model(cfg, seed=0)
    big = build_model(dataclasses.replace(cfg, rope_max_positions=64), seed=0)
    noise, embeds = _inputs(30, prompts=2)
    outs = []
    for m in (small, big):
        gen = StreamingGenerator(m, latent_size=HW, backend="sdpa")
        outs.append(gen.generate(noise, embeds, (24,), generator=torch.Generator().manual_seed(1)))
    assert small.rope_tables()[0].shape[0] == 32
    assert torch.equal(small.rope_tables()[0], big.rope_tables()[0][:32])
    assert torch.equal(outs[0], outs[1])


@pytest.mark.slow
def test_static_buffers_keep_their_addresses_across_chunks_and_switches(model):
    """What a captured graph reads stays at fixed addresses: a prompt switch only changes contents."""
    noise, embeds = _inputs(30, prompts=3)
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    runner = gen.executor
    ptrs = None
    for _ in gen.stream(noise, embeds, (9, 21), generator=torch.Generator().manual_seed(1)):
        now = [runner.x_in.data_ptr(), runner.renoise.data_ptr(), runner.x0_out.data_ptr()]
        now += [t.data_ptr() for kv in runner.text_kv for t in kv]
        pt = gen.executor.cache.plan_tensors
        now += [t.data_ptr() for t in (pt.write_start, pt.kv_len, pt.frame_offset)]
        assert ptrs is None or now == ptrs
        ptrs = now


@pytest.mark.parametrize("granularity", ["chunk", "step"])
def test_chunk_work_is_idempotent_for_graph_warmup(model, granularity):
    """A capture runs the work twice to warm up before the replay: running a chunk's body (or each
    step) again on the same static buffers must give the same result."""
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa", graph_granularity=granularity)
    runner, cache = gen.executor, gen.executor.cache
    noise, embeds = _inputs(3)
    runner.set_prompt(model.text_kv(embeds[0]))
    runner.x_in.copy_(noise)
    runner.renoise.normal_(generator=torch.Generator().manual_seed(2))
    plan = cache.plan_chunk(0)
    cache.activate(plan)
    runner.run_plan(plan)  # the plain run
    once = runner.x0_out.clone()
    for key in runner.graph_keys(plan):
        for _ in range(3):  # each graph's work runs twice to warm up, then once more captured/replayed
            runner.run_plan(plan, None if key[2] < 0 else key[2])
    assert torch.equal(runner.x0_out, once)
