"""Error metrics between a reference (BF16 / fp32) output and a quantized variant's.

Latents: SQNR (dB), relative error, cosine. Decoded video (frames ``[T, H, W, 3]``): PSNR and SSIM
per frame, and temporal flicker (frame-difference energy) against the reference. Over a long
video: the drift of the per-chunk SQNR. CLIP score of frames against a prompt, when a CLIP model
directory is given (transformers, imported lazily).

Definitions
-----------
SQNR = 10 log10(sum(ref^2) / sum((ref - test)^2)): signal power over error power, in dB. 20 dB
means the error carries 1 % of the signal's power (relative error 0.1); every 6.02 dB is one bit.
PSNR = 10 log10(range^2 / MSE) per frame, with frames in [0, 1] (range 1).
SSIM: Wang et al. 2004 (IEEE TIP 13(4)), 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, computed per channel over the valid region and averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from arvid.runtime.optional import require


def _pair(ref, test) -> tuple[torch.Tensor, torch.Tensor]:
    ref, test = torch.as_tensor(ref), torch.as_tensor(test)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: reference {tuple(ref.shape)} vs variant {tuple(test.shape)}")
    return ref.detach().to(torch.float64), test.detach().to(torch.float64)


def sqnr_db(ref, test) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (inf where they are equal)."""
    ref, test = _pair(ref, test)
    noise = (ref - test).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def relative_error(ref, test) -> float:
    """``||ref - test|| / ||ref||`` (Frobenius norms); SQNR = -20 log10 of it."""
    ref, test = _pair(ref, test)
    return ((ref - test).norm() / ref.norm()).item()


def cosine(ref, test) -> float:
    """Cosine similarity of the flattened tensors."""
    ref, test = _pair(ref, test)
    return F.cosine_similarity(ref.flatten(), test.flatten(), dim=0).item()


def as_frames(video) -> torch.Tensor:
    """Frames as float64 ``[T, H, W, C]`` in [0, 1]: uint8 input is divided by 255, float taken as is."""
    t = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if t.dim() != 4:
        raise ValueError(f"frames must be [T, H, W, C], got shape {tuple(t.shape)}")
    return t.to(torch.float64) / 255.0 if t.dtype == torch.uint8 else t.detach().to(torch.float64)


def decoded_to_frames(video: torch.Tensor) -> torch.Tensor:
    """The VAE decoder's ``[B, T, 3, H, W]`` in [-1, 1] (batch 1) -> ``[T, H, W, 3]`` in [0, 1]."""
    if video.dim() != 5 or video.shape[0] != 1:
        raise ValueError(f"decoded video must be [1, T, 3, H, W], got {tuple(video.shape)}")
    return ((video[0].permute(0, 2, 3, 1).to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr_per_frame(ref, test, data_range: float = 1.0) -> torch.Tensor:
    """PSNR (dB) of each frame ``[T]``; inf where a frame is identical."""
    ref, test = as_frames(ref), as_frames(test)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: reference {tuple(ref.shape)} vs variant {tuple(test.shape)}")
    mse = (ref - test).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_per_frame(ref, test, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each frame ``[T]`` (per channel over the valid region, then averaged).

    Frames smaller than the window use the largest odd window that fits.
    """
    ref, test = as_frames(ref), as_frames(test)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: reference {tuple(ref.shape)} vs variant {tuple(test.shape)}")
    _, h, w, c = ref.shape
    size = min(window, h - (1 - h % 2), w - (1 - w % 2))
    k = _gaussian_window(size, sigma).expand(c, 1, size, size)
    x, y = ref.permute(0, 3, 1, 2), test.permute(0, 3, 1, 2)  # [T, C, H, W]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, k, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def frame_difference_energy(video) -> torch.Tensor:
    """``mean((V_t - V_{t-1})^2)`` for t = 1..T-1: the temporal-change energy of a video ``[T, ...]``."""
    v = torch.as_tensor(video).detach().to(torch.float64)
    if v.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64)
    return (v[1:] - v[:-1]).pow(2).flatten(1).mean(1)


class FlickerMeter:
    """Temporal flicker of a variant against the reference, fed frame by frame in order (``add`` per
    chunk; frame pairs across chunk boundaries count). :func:`flicker_stats` on whole videos and
    ``arvid quality`` (chunk by chunk) both compute it here.

    ``ref`` / ``var``: per frame pair, the reference's / the variant's frame-difference energy
    ``mean((X_t - X_{t-1})^2)``. :meth:`summary` gives ``flicker_ratio``: the variant's energy over the
    reference's (1 = as much change between frames as the reference; > 1 = extra flicker; NaN for a
    static reference) and ``temporal_sqnr_db``: SQNR of the variant's frame differences against the
    reference's (how exactly the motion is kept; inf where they are equal).
    """

    def __init__(self) -> None:
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.ref: list[float] = []  # per frame pair, mean((R_t - R_{t-1})^2)
        self.var: list[float] = []
        self.err = 0.0  # sum of ||(V_t - V_{t-1}) - (R_t - R_{t-1})||^2
        self.numel_per_frame = 0

    def add(self, ref, var) -> None:
        """``ref``, ``var``: ``[T, ...]`` the next frames of both."""
        ref, var = _pair(ref, var)
        if self.prev is not None:
            ref, var = torch.cat([self.prev[0], ref]), torch.cat([self.prev[1], var])
        dr, dv = ref[1:] - ref[:-1], var[1:] - var[:-1]
        self.ref += dr.pow(2).flatten(1).mean(1).tolist()
        self.var += dv.pow(2).flatten(1).mean(1).tolist()
        self.err += (dv - dr).pow(2).sum().item()
        self.numel_per_frame = ref[0].numel()
        self.prev = (ref[-1:], var[-1:])

    def summary(self) -> dict:
        ref_e, var_e = sum(self.ref), sum(self.var)
        err = self.err / self.numel_per_frame if self.numel_per_frame else 0.0
        sqnr = math.inf if err == 0.0 else 10 * math.log10(ref_e / err) if ref_e > 0 else -math.inf
        return {"flicker_ratio": var_e / ref_e if ref_e else math.nan, "temporal_sqnr_db": sqnr}


def flicker_stats(ref, test) -> dict:
    """Temporal flicker of a variant against the reference, both ``[T, ...]`` (latents or frames):
    :class:`FlickerMeter` over the whole videos (see there for ``flicker_ratio`` / ``temporal_sqnr_db``)."""
    ref, test = _pair(ref, test)
    if ref.shape[0] < 2:
        raise ValueError("flicker needs at least two frames")
    meter = FlickerMeter()
    meter.add(ref, test)
    return meter.summary()


def drift_stats(per_chunk_sqnr_db: Sequence[float], window: int = 10) -> dict:
    """How the per-chunk latent SQNR moves over a video.

    Returns
    -------
    ``window`` (chunks averaged at each end: ``min(window, n // 2)``), ``first_db`` / ``last_db``
    (mean SQNR of the first / last ``window`` chunks), ``drop_db`` (first - last; positive = the
    error grew), ``slope_db_per_chunk`` (least-squares line through all chunks; 0 for one chunk).
    Infinite SQNRs (bit-identical chunks) are left out of the means and the fit.
    """
    s = np.asarray([x for x in per_chunk_sqnr_db], dtype=np.float64)
    n = len(s)
    if n == 0:
        raise ValueError("no chunks")
    w = max(1, min(window, n // 2)) if n > 1 else 1
    finite = np.isfinite(s)

    def mean(xs: np.ndarray) -> float:
        xs = xs[np.isfinite(xs)]
        return float(xs.mean()) if len(xs) else math.inf

    first, last = mean(s[:w]), mean(s[-w:])
    idx = np.arange(n)[finite]
    slope = float(np.polyfit(idx, s[finite], 1)[0]) if len(idx) >= 2 else 0.0
    drop = first - last if math.isfinite(first) and math.isfinite(last) else 0.0
    return {"window": w, "first_db": first, "last_db": last, "drop_db": drop, "slope_db_per_chunk": slope}


class ClipScorer:
    """CLIP score (Hessel et al. 2021: 100 * max(cos(image, text), 0)) with a local transformers
    ``CLIPModel`` directory; nothing is downloaded."""

    def __init__(self, model_dir: str, device: torch.device | str = "cpu") -> None:
        CLIPModel, CLIPProcessor = require("transformers", "CLIPModel", "CLIPProcessor", purpose="CLIP score")
        try:
            self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{model_dir}: cannot load a CLIP model ({e})") from None
        self.device = device

    @torch.no_grad()
    def score(self, frames, text: str) -> torch.Tensor:
        """CLIP score of each frame ``[T, H, W, 3]`` (in [0, 1] or uint8) against ``text`` -> ``[T]``."""
        f = as_frames(frames)
        images = [(x.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for x in f]
        inputs = self.processor(text=[text], images=images, return_tensors="pt", padding=True).to(self.device)
        img = _embeds(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        txt = _embeds(
            self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        )
        cos = F.cosine_similarity(img, txt.expand_as(img), dim=-1)
        return (100.0 * cos.clamp(min=0)).cpu().double()


def _embeds(out) -> torch.Tensor:
    # transformers 4.x returns the projected embeddings as a tensor; newer versions may wrap them
    # in a model output whose pooler_output holds them.
    return out if isinstance(out, torch.Tensor) else out.pooler_output
