"""arvid serve's control messages (Daydream Scope's) and prompt blends: no server, no model."""

import json
import sys

import pytest
import torch

from arvid.serve.control import ControlError, PromptSchedule, WeightedPrompt, blend, interpolate, parse_message


def test_scope_messages_parse():
    c = parse_message(json.dumps({"prompts": [{"text": "a cat", "weight": 2}, {"text": "a dog", "weight": 1}]}))
    assert c.prompts == [WeightedPrompt("a cat", 2.0), WeightedPrompt("a dog", 1.0)]
    c = parse_message(
        json.dumps(
            {
                "transition": {
                    "target_prompts": [{"text": "a fox", "weight": 1}],
                    "num_steps": 4,
                    "temporal_interpolation_method": "slerp",
                }
            }
        )
    )
    assert (c.prompts[0].text, c.transition_steps, c.method) == ("a fox", 4, "slerp")
    assert parse_message('{"paused": true}').paused is True
    assert parse_message('{"reset_cache": true}').reset_cache
    assert parse_message('{"prompts": ["plain text"]}').prompts == [WeightedPrompt("plain text", 1.0)]
    # keys Scope sends that arvid does not use are ignored beside known ones
    assert parse_message('{"paused": false, "noise_scale": 0.7}').unknown == ["noise_scale"]


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompts": []}', "non-empty list"),
        ('{"prompts": [{"text": "", "weight": 1}]}', "text must be a non-empty string"),
        ('{"prompts": [{"text": "a", "weight": -1}]}', "weight must be a number >= 0"),
        ('{"prompts": [{"text": "a", "weight": 0}]}', "add up to 0"),
        ('{"transition": {"target_prompts": ["a"], "num_steps": 0}}', "num_steps must be an integer 1 to"),
        ('{"transition": {"target_prompts": ["a"], "temporal_interpolation_method": "cubic"}}', "linear or slerp"),
        ('{"paused": "yes"}', "paused must be true or false"),
        ('{"volume": 3}', "nothing arvid knows"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_messages_say_what_is_wrong(message, says):
    with pytest.raises(ControlError, match=says):
        parse_message(message)


def _encoder():
    torch.manual_seed(0)
    table = {t: torch.randn(1, 4, 8) for t in ("a", "b", "c")}
    return table, table.__getitem__


def test_blend_is_the_normalised_weighted_mean_and_one_prompt_is_exact():
    table, encode = _encoder()
    assert blend([WeightedPrompt("a", 0.3)], encode) is table["a"]  # bit-exact: generate's embeddings
    assert blend([WeightedPrompt("a", 1), WeightedPrompt("b", 0)], encode) is table["a"]
    mixed = blend([WeightedPrompt("a", 3), WeightedPrompt("b", 1)], encode)
    torch.testing.assert_close(mixed, 0.75 * table["a"] + 0.25 * table["b"])


def test_interpolation_ends_and_slerp_keeps_the_norm_of_equal_norm_vectors():
    a, b = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    for method in ("linear", "slerp"):
        torch.testing.assert_close(interpolate(a, b, 0.0, method), a)
        assert interpolate(a, b, 1.0, method) is b
    mid = interpolate(a, b, 0.5, "slerp")
    torch.testing.assert_close(mid.norm(dim=-1), torch.ones(1, 1))
    torch.testing.assert_close(interpolate(a, b, 0.5, "linear"), torch.tensor([[[0.5, 0.5]]]))
    zero = torch.zeros(1, 1, 2)  # umT5's padding tokens: zero vectors, linear there (no 0/0)
    assert torch.isfinite(interpolate(zero, b, 0.5, "slerp")).all()


def test_schedule_switches_at_the_next_boundary_and_transitions_over_n():
    table, encode = _encoder()
    s = PromptSchedule(encode, [WeightedPrompt("a", 1)])
    assert s(3) is None  # nothing pending: the current prompt stays
    s.set([WeightedPrompt("b", 1)])
    assert s(6) is table["b"] and s(9) is None
    s.set([WeightedPrompt("c", 1)], steps=3, method="linear")
    steps = [s(12), s(15), s(18)]
    assert s(21) is None and s.transition_left == 0
    torch.testing.assert_close(steps[0], table["b"] + (table["c"] - table["b"]) / 3)
    assert steps[-1] is table["c"]  # the end is the target exactly
    assert s.shown() == [{"text": "c", "weight": 1.0}]


def test_serve_flags_workers_and_sessions():
    """``--max-sessions`` spreads generators over the workers; ``--gpus`` names CUDA devices that must exist."""
    from arvid.cli import build_parser
    from arvid.commands.serve import devices_of

    def parse(*flags):
        return build_parser().parse_args(["serve", "--device", "cpu", *flags])

    assert devices_of(parse()) == ["cpu"]
    assert devices_of(parse("--max-sessions", "2")) == ["cpu", "cpu"]
    args = parse("--gpus", "0,1")
    assert args.gpus == (0, 1) and args.host == "127.0.0.1" and args.port == 8000
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="CUDA device"):
            devices_of(args)
    else:
        assert devices_of(parse("--gpus", "0,1", "--max-sessions", "3")) == ["cuda:0", "cuda:1", "cuda:0"]


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    from arvid.cli import main

    monkeypatch.setitem(sys.modules, "aiortc", None)  # import raises ModuleNotFoundError
    assert main(["serve", "--device", "cpu"]) == 2
    assert "arvid serve: error: arvid serve needs aiortc: pip install 'arvid[serve]'" in capsys.readouterr().err
