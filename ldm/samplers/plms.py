"""PLMS: pseudo linear multistep (Liu et al. 2022, "PNDM"), as in the LDM code base.

The eps estimate fed to a deterministic DDIM step is an Adams-Bashforth combination of the
current and previous model eps: 1st step: the 2nd-order start (pseudo improved Euler:
average of eps at x_t and at the DDIM-predicted next point, one extra model call);
then ``(3 e_0 - e_1)/2``, ``(23 e_0 - 16 e_1 + 5 e_2)/12`` and from the 4th step on
``(55 e_0 - 59 e_1 + 37 e_2 - 9 e_3)/24``.
"""
from __future__ import annotations

from ..diffusion.gaussian import x0_eps_from_output
from ..diffusion.reverse import threshold_x0
from .base import Sampler
from .ddim import ddim_update

ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class PLMSSampler(Sampler):
    name = "plms"

    def __init__(self, schedule, parameterization: str = "eps", steps: int = 50, eta: float = 0.0, **options):
        if eta != 0.0:
            raise ValueError("PLMS is deterministic; eta must be 0")
        super().__init__(schedule, parameterization, steps=steps, **options)

    def eps_to_x0(self, eps, x, k):
        """x0 estimate from an (Adams-Bashforth combined) eps at step k, clipped as configured."""
        alpha, sigma = self.alpha_sigma(k)
        x0, _ = x0_eps_from_output(eps, x, alpha, sigma, "eps")
        return threshold_x0(x0, self.clip_denoised, self.dynamic_threshold)

    def step(self, denoise, x, k, cond, state, generator):
        history = state.setdefault("eps", [])
        x0, eps = self.predict(denoise, x, k, cond)
        a_next = self.levels[k + 1]
        if not history and k + 1 < self.num_steps:
            x_mid = ddim_update(x0, eps, a_next)
            _, eps_next = self.predict(denoise, x_mid, k + 1, cond)
            eps_prime = (eps + eps_next) / 2
        else:
            weights = ADAMS_BASHFORTH[min(len(history) + 1, 4)]
            eps_prime = weights[0] * eps
            for w, old in zip(weights[1:], reversed(history)):
                eps_prime = eps_prime + w * old
        history.append(eps)
        del history[:-3]
        x0_prime = self.eps_to_x0(eps_prime, x, k)
        return ddim_update(x0_prime, eps_prime, a_next), x0_prime
