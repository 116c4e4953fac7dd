"""Control messages of the ``parameters`` data channel and the prompt embeddings they ask for.

The messages are Daydream Scope's (so Scope's clients drive arvid unchanged), one JSON object each;
keys that are absent are left as they are, several keys in one message apply together:

============================================================  ==============================================
message                                                       effect (at the next chunk boundary)
============================================================  ==============================================
``{"prompts": [{"text": "a cat", "weight": 1.0}, ...]}``      the weighted blend of the prompts' embeddings
                                                              (weights >= 0, normalised to sum 1); a KV re-cache
``{"transition": {"target_prompts": [...], "num_steps": N,    from the current blend to the target's over N
"temporal_interpolation_method": "linear" | "slerp"}}``       chunks (one re-cache each), linear or spherical
``{"paused": true | false}``                                  generation waits / goes on (no frame is dropped)
``{"reset_cache": true}``                                     a new stream: the KV cache and the VAE's causal
                                                              cache are cleared, the noise seed starts again
============================================================  ==============================================

A ``"prompts"`` string list (``["a cat"]``) is accepted as weight 1 each. Anything else is a
:class:`ControlError` whose message goes back to the client as ``{"type": "error", "message"}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MAX_MESSAGE_CHARS = 65536  # a data-channel message longer than this is refused, not parsed
MAX_PROMPTS = 16  # prompts in one blend
MAX_PROMPT_CHARS = 4096  # characters of one prompt's text
MAX_TRANSITION_STEPS = 240  # chunks of one transition (3 minutes of video at the shipped settings)
METHODS = ("linear", "slerp")


class ControlError(ValueError):
    """A control message that cannot be applied; its text is the error event's message."""


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float


@dataclass
class Control:
    """One parsed control message: the fields it sets (``None``: left as it is)."""

    prompts: list[WeightedPrompt] | None = None
    transition_steps: int | None = None  # with ``prompts``: reach them over this many chunks
    method: str = "linear"
    paused: bool | None = None
    reset_cache: bool = False
    unknown: list[str] = field(default_factory=list)  # keys ignored (Scope sends more than arvid uses)


def parse_prompts(value: object, where: str = "prompts") -> list[WeightedPrompt]:
    """Scope's ``[{text, weight}]`` (or plain strings) -> prompts; weights >= 0, at least one > 0."""
    if not isinstance(value, list) or not value:
        raise ControlError(f"{where} must be a non-empty list of {{text, weight}}")
    if len(value) > MAX_PROMPTS:
        raise ControlError(f"{where}: at most {MAX_PROMPTS} prompts, got {len(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"text": item, "weight": 1.0}
        if not isinstance(item, dict):
            raise ControlError(f"{where}[{i}] must be {{text, weight}} or a string, got {type(item).__name__}")
        text, weight = item.get("text"), item.get("weight", 1.0)
        if not isinstance(text, str) or not text.strip():
            raise ControlError(f"{where}[{i}].text must be a non-empty string")
        if len(text) > MAX_PROMPT_CHARS:
            raise ControlError(f"{where}[{i}].text is {len(text)} characters; at most {MAX_PROMPT_CHARS}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ControlError(f"{where}[{i}].weight must be a number >= 0, got {weight!r}")
        out.append(WeightedPrompt(text.strip(), float(weight)))
    if not any(p.weight > 0 for p in out):
        raise ControlError(f"{where}: the weights add up to 0; give at least one weight > 0")
    return out


def parse_message(text: str | bytes) -> Control:
    """One data-channel message -> :class:`Control`; a :class:`ControlError` names what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ControlError("messages must be UTF-8 JSON text") from None
    if len(text) > MAX_MESSAGE_CHARS:
        raise ControlError(f"message of {len(text)} characters; at most {MAX_MESSAGE_CHARS}")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ControlError(f"not JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(msg, dict):
        raise ControlError(f"a message must be a JSON object, got {type(msg).__name__}")
    c = Control()
    if "prompts" in msg:
        c.prompts = parse_prompts(msg["prompts"])
    if "transition" in msg:
        t = msg["transition"]
        if not isinstance(t, dict):
            raise ControlError("transition must be {target_prompts, num_steps, temporal_interpolation_method}")
        if c.prompts is not None:
            raise ControlError("give prompts or transition.target_prompts, not both")
        c.prompts = parse_prompts(t.get("target_prompts"), "transition.target_prompts")
        steps = t.get("num_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRANSITION_STEPS:
            raise ControlError(f"transition.num_steps must be an integer 1 to {MAX_TRANSITION_STEPS}, got {steps!r}")
        c.transition_steps = steps
        c.method = t.get("temporal_interpolation_method", "linear")
        if c.method not in METHODS:
            raise ControlError(f"transition.temporal_interpolation_method must be linear or slerp, got {c.method!r}")
    if "paused" in msg:
        if not isinstance(msg["paused"], bool):
            raise ControlError(f"paused must be true or false, got {msg['paused']!r}")
        c.paused = msg["paused"]
    if "reset_cache" in msg:
        if not isinstance(msg["reset_cache"], bool):
            raise ControlError(f"reset_cache must be true or false, got {msg['reset_cache']!r}")
        c.reset_cache = msg["reset_cache"]
    c.unknown = sorted(k for k in msg if k not in ("prompts", "transition", "paused", "reset_cache"))
    if c.prompts is None and c.paused is None and not c.reset_cache and c.unknown:
        raise ControlError(f"nothing arvid knows in this message (keys: {', '.join(c.unknown)})")
    return c


def blend(prompts: list[WeightedPrompt], encode: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The weighted mean of the prompts' embeddings ``[1, text_len, text_dim]`` (weights normalised).

    One prompt (or one with all the weight) is its embedding as it is, not a product with 1.0: a
    served stream with one prompt then equals ``generate``'s bit for bit.
    """
    live = [p for p in prompts if p.weight > 0]
    if len(live) == 1:
        return encode(live[0].text)
    total = sum(p.weight for p in live)
    out = None
    for p in live:
        e = encode(p.text).float() * (p.weight / total)
        out = e if out is None else out + e
    return out


def interpolate(a: torch.Tensor, b: torch.Tensor, t: float, method: str) -> torch.Tensor:
    """Embeddings between ``a`` (t = 0) and ``b`` (t = 1): ``linear``, or ``slerp`` per token vector
    (the angle between each token's two vectors; linear where they are parallel or zero, as the
    padding tokens of umT5 are)."""
    if t >= 1:
        return b
    a32, b32 = a.float(), b.float()
    if method == "linear":
        return a32 + (b32 - a32) * t
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    cos = ((a32 * b32).sum(-1, keepdim=True) / (na * nb).clamp_min(1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    near = so.abs() < 1e-4  # (anti)parallel or zero vectors: the sine ratio is 0/0
    safe = torch.where(near, torch.ones_like(so), so)
    wa = torch.where(near, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / safe)
    wb = torch.where(near, torch.full_like(so, t), torch.sin(t * omega) / safe)
    return wa * a32 + wb * b32


class PromptSchedule:
    """The prompt state of one stream: what the next chunk boundary switches to, if anything.

    ``__call__(frame_start)`` is the generator's ``prompt_source`` (asked at each chunk boundary
    after the first, in the generating thread): the embeddings to switch to, or ``None``.
    The caller serialises :meth:`set` and the calls (:class:`~arvid.serve.worker.StreamSession` holds a lock).
    """

    def __init__(self, encode: Callable[[str], torch.Tensor], prompts: list[WeightedPrompt]) -> None:
        self.encode = encode
        self.current_prompts = prompts
        self.current = blend(prompts, encode)
        # (target prompts, target embeddings, steps, method) waiting for the next boundary
        self._pending: tuple | None = None
        self._steps: list[torch.Tensor] = []  # the remaining embeddings of a transition in progress
        self._steps_target: list[WeightedPrompt] | None = None

    def set(
        self, prompts: list[WeightedPrompt], steps: int | None = None, method: str = "linear", *, target=None
    ) -> None:
        """Switch to ``prompts`` (embeddings ``target``, default: their blend) at the next boundary,
        or over ``steps`` chunk boundaries."""
        target = blend(prompts, self.encode) if target is None else target
        self._pending = (prompts, target, steps or 1, method)

    def __call__(self, frame_start: int) -> torch.Tensor | None:
        pending, self._pending = self._pending, None
        if pending is not None:  # a new target replaces a transition in progress, starting from where it is
            prompts, target, steps, method = pending
            start = self.current
            self._steps = [interpolate(start, target, (k + 1) / steps, method) for k in range(steps)]
            self._steps[-1] = target  # the end is the target exactly (no interpolation rounding)
            self._steps_target = prompts
        if not self._steps:
            return None
        self.current = self._steps.pop(0)
        self.current_prompts = self._steps_target  # shown as the target while on the way to it
        return self.current

    @property
    def transition_left(self) -> int:
        """Chunk boundaries a transition in progress still takes (0: none)."""
        return len(self._steps)

    def shown(self) -> list[dict]:
        """The current prompts as Scope writes them, for the chunk events."""
        return [{"text": p.text, "weight": p.weight} for p in self.current_prompts]
