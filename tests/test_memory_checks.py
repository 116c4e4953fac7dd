"""Sizes that cannot fit are refused before allocating, with the number needed (issue #25, item 2)."""

from __future__ import annotations

import pytest

import arvid.runtime.devices as devices
from arvid.cli import main
from arvid.runtime import StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")


@pytest.fixture
def one_mib_free(monkeypatch):
    monkeypatch.setattr(devices, "free_bytes", lambda device: 2**20)


@pytest.fixture
def one_gib_free_and_no_model(monkeypatch):
    """1 GiB free, and a model load fails the test: the checks must refuse before any weights load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the memory check")

    monkeypatch.setattr("arvid.runtime.loaders.load_dit", refuse)
    monkeypatch.setattr(devices, "free_bytes", lambda device: 2**30)


def test_check_fits_names_what_and_how_much(one_mib_free):
    devices.check_fits(2**19, "cpu", "a small thing")
    with pytest.raises(ValueError, match=r"^the thing needs 2\.0 GiB, but only 1\.0 MiB is free on cpu$"):
        devices.check_fits(2 * 2**30, "cpu", "the thing")


def test_free_bytes_reads_the_machine():
    free = devices.free_bytes("cpu")
    assert free is None or free > 0


def test_kv_cache_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    model = build_model(TINY.model, seed=0)
    monkeypatch.setattr(devices, "free_bytes", lambda device: 10_000)
    for backend in ("sdpa", "eager"):  # the ring buffer and the reference-style concatenating cache
        with pytest.raises(
            ValueError, match=r"^the KV cache \(batch 4, [\d,]+ tokens x \d+ layers\) needs .* free on cpu$"
        ):
            StreamingGenerator(
                model, latent_size=(TINY.latent_height, TINY.latent_width), batch_size=4, backend=backend
            )


def test_rope_tables_for_an_endless_length_are_refused(monkeypatch):
    model = build_model(TINY.model, seed=0)
    monkeypatch.setattr(devices, "free_bytes", lambda device: 2**30)
    with pytest.raises(
        ValueError, match=r"^the RoPE tables for 300,000,000 positions .* needs [\d.,]+ GiB, but only 1\.0 GiB"
    ):
        model.rope.ensure(300_000_000)


def test_bench_refuses_latents_that_cannot_fit_before_loading(one_gib_free_and_no_model, capsys):
    argv = ["bench", "--preset", "tiny", "--frames", "3000000", "--rounds", "1", "--quiet", "--yes"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "arvid bench: error: the noise and latents of 3,000,000 latent frames x batch 1 for 2 variant(s) "
        "needs 45.8 GiB, but only 1.0 GiB is free on cpu\n"
    )


def test_generate_refuses_latents_that_cannot_be_kept_before_loading(one_gib_free_and_no_model, capsys, tmp_path):
    out = tmp_path / "x.safetensors"
    assert main(["generate", "--preset", "tiny", "--frames", "3000000", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "arvid generate: error: keeping the latents of 3,000,000 frames to save them needs 22.9 GiB, "
        "but only 1.0 GiB is free on cpu\n"
    )
    assert not out.exists()


def test_generate_refuses_rope_tables_that_cannot_fit_before_loading(one_gib_free_and_no_model, capsys, tmp_path):
    """A video is written as it streams (no latents kept), but frame positions are absolute: the RoPE
    tables of an endless length are refused before any weights load, not after."""
    out = tmp_path / "x.mp4"
    assert main(["generate", "--preset", "tiny", "--frames", "300000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arvid generate: error: the RoPE tables for 300,000,000 positions (latent frames; ")
    assert err.endswith("but only 1.0 GiB is free on cpu\n") and err.count("\n") == 1
    assert not out.exists()
