"""DPM-Solver++(2M): multistep second-order solver of the diffusion ODE in data prediction
(Lu et al. 2022, "DPM-Solver++", Alg. 2), on the discrete schedule.

With ``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)``, ``lambda_t = log(alpha_t/sigma_t)``
and ``h_i = lambda_{t_i} - lambda_{t_{i-1}}``:

- first step (1st order, = DDIM): ``x_i = sigma_i/sigma_{i-1} x_{i-1} - alpha_i (e^{-h_i} - 1) x0_{i-1}``
- then ``r_i = h_{i-1}/h_i``, ``D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}`` and
  ``x_i = sigma_i/sigma_{i-1} x_{i-1} - alpha_i (e^{-h_i} - 1) D_i``.

Steps to a clean target level (sigma = 0) return the x0 estimate (the h -> inf limit);
``lower_order_final`` uses the 1st-order update on the last step (helps below ~15 steps).
The timesteps come from the shared spacing options; the default here is ``spacing='logsnr'``
(uniform steps in lambda, as the paper recommends); ``'uniform'`` gives DDIM's grid.
"""
from __future__ import annotations

import math

from ..diffusion.gaussian import log_snr
from .base import Sampler


class DPMSolverPlusPlus2MSampler(Sampler):
    name = "dpm_solver++"

    def __init__(self, schedule, parameterization: str = "eps", steps: int = 20,
                 lower_order_final: bool = False, eta: float = 0.0, spacing: str = "logsnr", **options):
        if eta != 0.0:
            raise ValueError("DPM-Solver++(2M) is deterministic; eta must be 0")
        super().__init__(schedule, parameterization, steps=steps, spacing=spacing, **options)
        self.lower_order_final = bool(lower_order_final)

    def step(self, denoise, x, k, cond, state, generator):
        x0, _ = self.predict(denoise, x, k, cond)
        alpha_c, sigma_c = self.alpha_sigma(k)
        alpha_n, sigma_n = self.alpha_sigma(k + 1)
        if sigma_n == 0.0:
            return x0, x0
        h = log_snr(self.levels[k + 1]) - log_snr(self.levels[k])
        prev_x0, prev_h = state.get("x0"), state.get("h")
        last = k == self.num_steps - 1
        if prev_x0 is None or not math.isfinite(prev_h) or (last and self.lower_order_final):
            d = x0
        else:
            half_inv_r = h / (2.0 * prev_h)  # 1/(2 r) with r = h_{i-1}/h_i
            d = (1.0 + half_inv_r) * x0 - half_inv_r * prev_x0
        state["x0"], state["h"] = x0, h
        x_next = (sigma_n / sigma_c) * x - alpha_n * math.expm1(-h) * d
        return x_next, x0
