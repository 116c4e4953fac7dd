"""The functional chunk step (the function every exported graph is traced from) against the runtime.

The functional form takes the cache as an input, masks the keys from the plan scalars and returns
the new K/V for the host to write; run through ``GraphRunner`` inside ``generate()`` it must give
the eager baseline's latents, prompt switches (re-cache spans of every length) included.
"""

import itertools

import pytest
import torch
from _refs import PlanLog, eager_stream, run_stream, stream_inputs

from arvid.runtime import (
    FunctionalKVCache,
    FunctionalStep,
    GeneratorOptions,
    StreamConfig,
    StreamingGenerator,
    build_model,
    get_preset,
)
from arvid.runtime.model import sinusoidal_embedding

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
FRAMES, SWITCHES = 36, (6, 21)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


def _mismatch(out, want):
    err = (out - want).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return f"max abs err {err.max().item():.3e} at {idx}"


@pytest.mark.parametrize("variant", ["functional", "functional+chunk"])
@pytest.mark.parametrize("global_sink", [True, False])
def test_functional_graphs_in_generate_match_the_eager_baseline(model, variant, global_sink, monkeypatch):
    """36 frames, switches at s = 6 (<= 12: the cache, sink included, is rebuilt from frames 0-5) and at
    s = 21 (> 12: a 9-frame window re-run with the sink kept, or all 12 frames rebuilt without global_sink),
    the fill phase, evictions and the ring's wrap-around after each re-cache; the plans the run made are
    checked for each of them. The eager baseline (tests/_refs.py) is computed once per global_sink."""
    stream = StreamConfig(global_sink=global_sink)
    want = eager_stream(FRAMES, SWITCHES, stream)
    log = PlanLog(monkeypatch, stream)
    gen = GeneratorOptions.from_variant(variant).build(model, stream, latent_size=HW)
    out = run_stream(gen, FRAMES, SWITCHES)
    assert torch.allclose(out, want, atol=1e-5, rtol=1e-5), _mismatch(out, want)
    # the hard cases the stream went through
    ct, sink, slots = log.chunk_tokens, stream.sink_chunks, stream.slot_chunks
    rebuild, second = log.recaches()
    assert (rebuild.frame_start, rebuild.num_frames, rebuild.write_start) == (0, 6, 0)  # sink rebuilt
    if global_sink:  # the sink kept: only the window re-run, written from the first window slot
        assert (second.frame_start, second.num_frames, second.write_start) == (12, 9, sink * ct)
    else:
        assert (second.frame_start, second.num_frames, second.write_start) == (9, 12, 0)
    fill, middle, last = log.stretches()
    assert [f for _, f in fill] == [0, 1]  # the fill phase
    evicting = [(slot, f) for slot, f in middle + last if f == slots and slot >= sink]
    assert len(evicting) >= 8, (middle, last)  # a window slot overwritten with every slot full
    for stretch in (middle, last):  # the write position wraps from the last slot to the first window slot
        assert (slots - 1, sink) in {(a[0], b[0]) for a, b in itertools.pairwise(stretch)}, stretch
    assert all(f == slots for _, f in last), last  # after the window re-run: evictions only


def test_functional_step_equals_the_in_place_ring_step(model):
    """One forward on a partly filled ring: same x0 and the same K/V the ring writes into its slot."""
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    runner, cache = gen.executor, gen.executor.cache
    noise, embeds = stream_inputs(12, 1)
    runner.prepare(12)
    runner.set_prompt(model.text_kv(embeds[0]))
    for fs in (0, 3):  # two chunks in the ring
        runner.run_chunk(noise[:, fs : fs + 3], [torch.randn(1, 3, 16, *HW) for _ in range(3)], fs)
    before_k, before_v = cache.k.clone(), cache.v.clone()
    plan = cache.plan_chunk(6)
    cache.activate(plan)
    x, t = noise[:, 6:9], torch.full((1, 3), 937.5)
    text_k = torch.stack([k for k, _ in runner.text_kv])
    text_v = torch.stack([v for _, v in runner.text_kv])
    pt = plan.tensors
    x0, new_k, new_v = FunctionalStep(model)(
        x, sinusoidal_embedding(TINY.model.freq_dim, t), torch.tensor([0.9375]), text_k, text_v,
        before_k, before_v, pt.write_start, pt.kv_len, pt.frame_offset,
    )  # fmt: skip
    flow = model(x, t, runner.text_kv, frame_offset=plan.frame_offset, cache=cache, plan=plan)
    want = x - 0.9375 * flow
    ws, n = plan.write_start, new_k.shape[2]
    assert torch.allclose(x0, want, atol=1e-6, rtol=1e-6), _mismatch(x0, want)
    assert torch.allclose(new_k, cache.k[:, :, ws : ws + n], atol=1e-6), _mismatch(new_k, cache.k[:, :, ws : ws + n])
    # Not bitwise: a masked attention over S + L keys sums in another order than one over the
    # valid prefix, so from layer 1 on the inputs of v differ by float32 rounding.
    assert torch.allclose(new_v, cache.v[:, :, ws : ws + n], atol=1e-6), _mismatch(new_v, cache.v[:, :, ws : ws + n])
    assert torch.equal(before_k[:, :, ws + n :], cache.k[:, :, ws + n :])  # nothing else written


def test_functional_mask_excludes_the_overwritten_slots_and_the_invalid_tail():
    k = torch.zeros(1, 1, 12, 1, 2)
    cache = FunctionalKVCache(k, k, torch.tensor([3], dtype=torch.int32), torch.tensor([9], dtype=torch.int32))
    mask = cache.mask(3)[0, 0, 0].tolist()
    # slots 0-2 valid, 3-5 being overwritten, 6-8 valid, 9-11 past kv_len, then the 3 new keys
    assert mask == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3


def test_functional_runner_refuses_frames_past_its_rope_table():
    import dataclasses

    small = build_model(dataclasses.replace(TINY.model, rope_max_positions=16), seed=0)
    gen = StreamingGenerator(small, latent_size=HW, backend="functional")
    noise, embeds = stream_inputs(18, 1)
    with pytest.raises(ValueError, match="RoPE positions"):
        gen.generate(noise, embeds)
    # rows of the token grid index the same table: 36 latent rows = 18 token rows > 16
    tall = StreamingGenerator(small, latent_size=(36, 8), backend="functional")
    with pytest.raises(ValueError, match="RoPE positions"):
        tall.generate(torch.zeros(1, 6, TINY.model.in_dim, 36, 8), embeds)
