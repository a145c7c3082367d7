"""Per-neuron time constants τ, shaped like the states.

Distributions are parameterised by their mean m and coefficient of variation c = std/mean
(``spread``), so that heterogeneity can be changed without changing the average time scale:

=============  ==========================================================================
constant       τ = m
uniform        τ ~ U(m(1 − √3 c), m(1 + √3 c))        (needs c < 1/√3 so that τ > 0)
lognormal      log τ ~ N(μ, σ²), σ² = log(1 + c²), μ = log m − σ²/2
gamma          τ ~ Gamma(k, θ), k = 1/c², θ = m c²
=============  ==========================================================================

Draws use a ``torch.Generator`` seeded explicitly, in float64 on the CPU, and are then cast to
the requested dtype and device: the same seed gives the same τ on every device.

The equilibrium (and so every EP gradient) does not depend on τ; only the path to it does. A
learnable τ therefore only matters when relaxation runs for a fixed budget (BPTT-style
training); EP estimators give it no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._states import Shapes

DISTRIBUTIONS = ("constant", "uniform", "lognormal", "gamma")


def sample_tau(shape: Sequence[int], distribution: str = "constant", mean: float = 1.0,
               spread: float = 0.0, *, generator: torch.Generator) -> Tensor:
    """Draw τ of ``shape`` (float64, CPU) from ``distribution`` with the given mean and spread."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown τ distribution {distribution!r}; known: "
                         f"{', '.join(DISTRIBUTIONS)}")
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(f"τ mean must be positive and finite, got {mean}")
    if not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"τ spread (coefficient of variation) must be ≥ 0, got {spread}")
    shape = tuple(int(d) for d in shape)
    if distribution == "constant" or spread == 0:
        return torch.full(shape, float(mean), dtype=torch.float64)
    if distribution == "uniform":
        half = math.sqrt(3.0) * spread
        if half >= 1:
            raise ValueError(f"uniform τ needs spread < 1/√3 ≈ 0.577 to stay positive, "
                             f"got {spread}")
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return mean * (1 - half + 2 * half * u)
    if distribution == "lognormal":
        var = math.log1p(spread * spread)
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        return torch.exp(math.log(mean) - 0.5 * var + math.sqrt(var) * z)
    # gamma: torch's Gamma sampler takes no generator, so draw by Marsaglia–Tsang ourselves.
    return _gamma(shape, 1.0 / (spread * spread), generator) * (mean * spread * spread)


def _gamma(shape: tuple[int, ...], k: float, generator: torch.Generator) -> Tensor:
    """Gamma(k, 1) samples by Marsaglia & Tsang (2000), seeded; k < 1 by the boost u^{1/k}."""
    boost = k < 1
    a = k + 1.0 if boost else k
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.float64)
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 16
        z = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z * z + d - d * v
                        + d * torch.log(v.clamp_min(1e-300)))
        acc = (d * v)[ok][: n - filled]
        out[filled: filled + acc.numel()] = acc
        filled += acc.numel()
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / k)
    return out.reshape(shape)


def check_tau(taus: Sequence[Tensor], shapes: Shapes | None = None) -> None:
    """Raise a clear error unless every τ is finite and positive (and shaped like the states)."""
    if shapes is not None and len(taus) != len(shapes):
        raise ValueError(f"{len(taus)} τ tensors given for {len(shapes)} state layers")
    for i, t in enumerate(taus):
        if shapes is not None and tuple(t.shape) != tuple(shapes[i]):
            raise ValueError(f"τ of layer {i} has shape {tuple(t.shape)}, the state has "
                             f"{tuple(shapes[i])}")
        if not torch.isfinite(t).all():
            raise ValueError(f"τ of layer {i} has NaN or infinite entries")
        if not (t > 0).all():
            raise ValueError(f"τ of layer {i} has entries ≤ 0 (min {float(t.min()):g}); "
                             "time constants must be positive")


class TimeConstants(nn.Module):
    """One τ per neuron and layer, shaped like the per-sample states.

    Fixed τ are buffers; learnable τ are parameters in log space (τ = exp(log τ) stays positive).
    Call the module to get the tuple of τ tensors, or :meth:`inverse` for 1/τ.
    """

    def __init__(self, taus: Sequence[Tensor], *, learnable: bool = False) -> None:
        super().__init__()
        taus = [torch.as_tensor(t) for t in taus]
        check_tau(taus)
        self.learnable = learnable
        self.n_layers = len(taus)
        for i, t in enumerate(taus):
            if learnable:
                self.register_parameter(f"log_tau_{i}", nn.Parameter(torch.log(t)))
            else:
                self.register_buffer(f"tau_{i}", t.clone())

    @classmethod
    def sample(cls, shapes: Shapes, distribution: str = "constant", mean: float = 1.0,
               spread: float = 0.0, *, seed: int = 0, learnable: bool = False,
               dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> TimeConstants:
        """Draw τ for every layer of ``shapes`` (per-sample state shapes) with one seed."""
        gen = torch.Generator().manual_seed(int(seed))
        dtype = dtype or torch.get_default_dtype()
        taus = [sample_tau(shape, distribution, mean, spread, generator=gen).to(dtype=dtype,
                                                                                 device=device)
                for shape in shapes]
        return cls(taus, learnable=learnable)

    @classmethod
    def constant(cls, shapes: Shapes, value: float = 1.0, **kwargs) -> TimeConstants:
        """τ = ``value`` everywhere."""
        return cls.sample(shapes, "constant", value, 0.0, **kwargs)

    def forward(self) -> tuple[Tensor, ...]:
        if self.learnable:
            return tuple(torch.exp(getattr(self, f"log_tau_{i}")) for i in range(self.n_layers))
        return tuple(getattr(self, f"tau_{i}") for i in range(self.n_layers))

    def inverse(self) -> tuple[Tensor, ...]:
        """1/τ per layer."""
        return tuple(1.0 / t for t in self())

    def stats(self) -> dict[str, float]:
        """min, max, mean of τ over all neurons, and the spread ratio τmax/τmin."""
        flat = torch.cat([t.detach().reshape(-1) for t in self()])
        lo, hi = float(flat.min()), float(flat.max())
        return {"min": lo, "max": hi, "mean": float(flat.mean()), "ratio": hi / lo}
