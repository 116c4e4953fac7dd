"""The few-step flow-matching schedule LongLive samples with."""

from __future__ import annotations

import torch

from .config import StreamConfig


class FlowMatchScheduler:
    """Shifted flow matching, ``sigma(s) = shift*s / (1 + (shift-1)*s)`` over ``s = linspace(1, 0, N+1)[:-1]``.

    The denoising step list (e.g. ``[1000, 750, 500, 250]``) is "warped": step k indexes the
    table (with a trailing 0 appended) at ``N - k``, so LongLive's steps run at
    t = 1000, 937.5, 833.3, 625. The model predicts the flow ``noise - x0``.
    """

    def __init__(self, cfg: StreamConfig) -> None:
        n = cfg.num_train_timesteps
        # float32 throughout, as the reference computes the table.
        s = torch.linspace(1.0, 0.0, n + 1)[:-1]
        sigmas = cfg.shift * s / (1 + (cfg.shift - 1) * s)
        table = torch.cat([sigmas * n, torch.zeros(1)])
        idx = torch.tensor([n - k for k in cfg.denoising_steps])
        self.timesteps: list[float] = table[idx].tolist()
        self.sigmas: list[float] = (table[idx] / n).tolist()
        self.context_timestep = float(cfg.context_noise)

    def __len__(self) -> int:
        return len(self.timesteps)

    @staticmethod
    def flow_to_x0(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
        return x_t - sigma * flow

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1 - sigma) * x0 + sigma * noise
