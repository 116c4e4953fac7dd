"""The ``flash`` attention backend (flash-attn's ``flash_attn_with_kvcache`` on the ring buffer), tested on
the CPU against a stand-in ``flash_attn`` module with the documented semantics: keys ``[0, cache_seqlens[b])``
of ``k_cache`` / ``v_cache`` ``[B, S, H, D]``, nothing appended when ``k`` and ``v`` are None."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
from arvid.runtime import attention as attn

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)


def _stand_in(calls: list) -> types.ModuleType:
    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, softmax_scale=None,
                                causal=False, **kwargs):  # fmt: skip
        assert k is None and v is None and not causal
        calls.append((k_cache.data_ptr(), v_cache.data_ptr(), cache_seqlens))
        out = torch.empty_like(q)
        for b, n in enumerate(cache_seqlens.tolist()):
            s = torch.einsum("qhd,khd->hqk", q[b].float(), k_cache[b, :n].float()) * softmax_scale
            out[b] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v_cache[b, :n].float()).to(q.dtype)
        return out

    return types.SimpleNamespace(flash_attn_with_kvcache=flash_attn_with_kvcache)


@pytest.fixture
def flash_on_cpu(monkeypatch):
    """The stand-in as ``flash_attn`` and the backend allowed on the CPU in any dtype (its KV-cache
    precondition kept); yields the recorded calls."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn", _stand_in(calls))
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    backend = attn._BACKENDS["flash"]
    cpu_ok = lambda device, dtype, kv_dtype=None: attn._model_dtype_cache_only(dtype, kv_dtype)
    monkeypatch.setitem(attn._BACKENDS, "flash", dataclasses.replace(backend, unavailable=cpu_ok))
    return calls


def test_flash_matches_sdpa_reading_the_ring_in_place(flash_on_cpu):
    model = build_model(TINY.model, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 24, TINY.model.in_dim, *HW, generator=g)  # fill phase and ring wrap-around
    prompts = [torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g) for _ in range(2)]
    out = {}
    for name in ("sdpa", "flash"):
        gen = StreamingGenerator(model, StreamConfig(), latent_size=HW, backend=name)
        out[name] = gen.generate(noise, prompts, (15,), generator=torch.Generator().manual_seed(1))
        if name == "flash":
            cache = gen.executor.cache
    assert torch.allclose(out["flash"], out["sdpa"], atol=1e-5, rtol=1e-5)
    rings = {(cache.layers[i].k.data_ptr(), cache.layers[i].v.data_ptr()) for i in range(TINY.model.num_layers)}
    assert flash_on_cpu and all((k, v) in rings for k, v, _ in flash_on_cpu)  # the ring itself: no copy
    assert all(n is cache.plan_tensors.kv_len for _, _, n in flash_on_cpu)  # the plan's device scalars


def test_flash_refuses_an_fp8_cache(flash_on_cpu):
    model = build_model(TINY.model, seed=0)
    with pytest.raises(ValueError, match="no FP8 KV cache"):
        StreamingGenerator(model, latent_size=HW, backend="flash", kv_cache_dtype=torch.float8_e4m3fn)


def test_flash_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    with pytest.raises(ValueError, match=r"flash-attn is not installed \(pip install flash-attn"):
        attn.get_backend("flash", "cuda", torch.bfloat16)
