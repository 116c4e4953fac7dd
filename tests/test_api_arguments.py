"""The Python API names a bad argument and what it expects (issue #25, item 3).

Pipeline and StreamingGenerator raise ``TypeError`` for the wrong kind of value and ``ValueError``
for a value of the right kind that cannot work (shape, range, NaN), never an error from inside torch.
"""

from __future__ import annotations

import math

import pytest
import torch

from arvid.pipeline import Pipeline
from arvid.runtime import StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
NOISE = (1, 6, TINY.model.in_dim, *HW)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


@pytest.fixture(scope="module")
def gen(model):
    return StreamingGenerator(model, latent_size=HW, backend="sdpa")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("tiny", device="cpu", need_vae=False)


def _prompt() -> torch.Tensor:
    return torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=torch.Generator().manual_seed(0))


def _nan(shape) -> torch.Tensor:
    x = torch.zeros(shape)
    x.view(-1)[3] = math.nan
    return x


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(model="tiny"), TypeError, "^model must be an arvid CausalWanModel, got str$"),
        (dict(latent_size=8), TypeError, r"^latent_size must be a pair \(H, W\) of ints, got 8$"),
        (dict(latent_size=(8.0, 8)), TypeError, r"^latent_size\[0\] must be an int, got float$"),
        (dict(latent_size=(0, 8)), ValueError, r"^latent_size\[0\] must be >= 1, got 0$"),
        (dict(batch_size=0), ValueError, "^batch_size must be >= 1, got 0$"),
        (dict(batch_size=True), TypeError, "^batch_size must be an int, got bool$"),
        (dict(stream={"chunk_frames": 3}), TypeError, "^stream must be a StreamConfig or None, got dict$"),
        (dict(backend=1), TypeError, r"^backend must be a backend or engine name \(str\) or None, got int$"),
        (dict(kv_cache_dtype="fp8"), TypeError, "^kv_cache_dtype must be a torch.dtype or None, got str$"),
    ],
)
def test_generator_constructor_names_the_argument(model, kwargs, error, message):
    args = {"model": model, "latent_size": HW, "backend": "sdpa", **kwargs}
    m = args.pop("model")
    with pytest.raises(error, match=message):
        StreamingGenerator(m, **args)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda g: g.generate(torch.zeros(NOISE), None), TypeError, "^prompts must be an embedding tensor"),
        (
            lambda g: g.generate(torch.zeros(NOISE), "a cat"),
            TypeError,
            "^prompts must be an embedding tensor .* got str$",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), ["a cat"]),
            TypeError,
            "^prompt 0 is text: StreamingGenerator takes embeddings",
        ),
        (lambda g: g.generate(torch.zeros(NOISE), []), ValueError, "^prompts must hold at least one embedding"),
        (
            lambda g: g.generate(torch.zeros(NOISE), [_prompt().long()]),
            TypeError,
            "^prompt 0 embeddings must be a floating-point tensor, got int64$",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), _nan(_prompt().shape)),
            ValueError,
            "^prompt 0 embeddings has NaN or infinite values$",
        ),
        (lambda g: g.generate(_nan(NOISE), _prompt()), ValueError, "^noise has NaN or infinite values$"),
        (
            lambda g: g.generate(torch.zeros(NOISE, dtype=torch.int64), _prompt()),
            TypeError,
            "^noise must be a floating-point tensor, got int64$",
        ),
        (lambda g: g.generate(None, _prompt()), TypeError, "^noise must be a tensor .*got None$"),
        (
            lambda g: g.generate([0.0], _prompt(), num_frames=6),
            TypeError,
            "^noise must be a tensor, a torch.Generator or a callable, got list$",
        ),
        (
            lambda g: g.generate(torch.Generator(), _prompt(), num_frames=6.0),
            TypeError,
            "^num_frames must be an int or None, got float$",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), [_prompt()] * 2, "3"),
            TypeError,
            "^switch_frames must be a sequence of ints",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), [_prompt()] * 2, [3.0]),
            TypeError,
            r"^switch_frames\[0\] must be an int, got float$",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), _prompt(), renoise=_nan((2, 3, 1, 3, TINY.model.in_dim, *HW))),
            ValueError,
            "^renoise has NaN",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), _prompt(), generator=0),
            TypeError,
            "^generator must be a torch.Generator or None, got int$",
        ),
        (
            lambda g: g.generate(torch.zeros(NOISE), _prompt(), prompt_source=1),
            TypeError,
            "^prompt_source must be a callable",
        ),
        (
            lambda g: g.generate(lambda ci, s: _nan(s), _prompt(), num_frames=3),
            ValueError,
            r"^noise\(0, shape\) has NaN or infinite values$",
        ),
        (lambda g: g.capture("a cat"), TypeError, "^prompt 0 is text"),
    ],
)
def test_generator_methods_name_the_argument(gen, call, error, message):
    with pytest.raises(error, match=message):
        call(gen)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda p: p.generate(None, num_frames=3),
            TypeError,
            "^prompts must be a text, an embedding tensor .* got NoneType$",
        ),
        (lambda p: p.generate([], num_frames=3), ValueError, "^prompts is empty"),
        (
            lambda p: p.generate(["a", 3], [3], num_frames=6),
            TypeError,
            r"^prompts\[1\] must be a text or an embedding tensor, got int$",
        ),
        (
            lambda p: p.generate(torch.zeros(1, 4, 5), num_frames=3),
            ValueError,
            r"^prompts\[0\] embeddings must be \[1, text_len, text_dim\]",
        ),
        (
            lambda p: p.generate(_nan(_prompt().shape), num_frames=3),
            ValueError,
            r"^prompts\[0\] has NaN or infinite values$",
        ),
        (lambda p: p.generate("a cat", num_frames="3"), TypeError, "^num_frames must be an int or None, got str$"),
        (lambda p: p.generate("a cat", num_frames=3, seed=-1), ValueError, "^seed must be >= 0, got -1$"),
        (lambda p: p.generate("a cat", num_frames=3, fps=0), ValueError, "^fps must be >= 1, got 0$"),
        (
            lambda p: p.generate("a cat", num_frames=3, noise=_nan((1, 3, TINY.model.in_dim, *HW))),
            ValueError,
            "^noise has NaN",
        ),
        (lambda p: next(p.stream("a cat", num_frames=3, decode="yes")), TypeError, "^decode must be a bool, got str$"),
        (lambda p: next(p.stream(["a", "b"], 3, num_frames=6)), TypeError, "^switch_frames must be a sequence of ints"),
        (
            lambda p: p.write(3, "a cat", num_frames=3),
            TypeError,
            r"^out must be a path \(str or pathlib.Path\) or None, got int$",
        ),
        (lambda p: p.encode(None), TypeError, "^prompts must be a text"),
    ],
)
def test_pipeline_methods_name_the_argument(pipe, call, error, message):
    with pytest.raises(error, match=message):
        call(pipe)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(model=3), TypeError, r"^model must be a path \(str or pathlib.Path\) or None, got int$"),
        (dict(device=0), TypeError, "^device must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device, got int$"),
        (dict(dtype=32), TypeError, "^dtype must be 'fp32', 'bf16', 'fp16', a torch.dtype or None, got int$"),
        (dict(seed="0"), TypeError, "^seed must be an int, got str$"),
        (dict(stream_config={}), TypeError, "^stream_config must be a StreamConfig or None, got dict$"),
        (dict(backend=["sdpa"]), TypeError, "^backend must be a variant string, GeneratorOptions or None, got list$"),
    ],
)
def test_from_pretrained_names_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        Pipeline.from_pretrained(**{"model": "tiny", "device": "cpu", **kwargs})


def test_a_good_call_still_runs(gen, pipe):
    out = gen.generate(torch.zeros(1, 3, TINY.model.in_dim, *HW), _prompt(), ())
    assert out.shape == (1, 3, TINY.model.in_dim, *HW) and torch.isfinite(out).all()
    video = pipe.generate("a cat", num_frames=3, decode=False)
    assert video.latents.shape[1] == 3
