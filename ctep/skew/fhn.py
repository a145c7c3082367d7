"""Diffusively coupled FitzHugh–Nagumo units as a skew-gradient network.

For n activator/inhibitor pairs (u_i, v_i), inputs I = W x + b and a graph Laplacian
L = Σ_{(i,j)∈E} g_ij (e_i − e_j)(e_i − e_j)ᵀ of trainable symmetric couplings g_ij,

    H(u, v) = Σ_i [ −(u_i²/2 − u_i⁴/12) + u_i v_i − γ v_i²/2 + a v_i − I_i u_i ] + ½ uᵀ L u,

    ∂H/∂u = −(u − u³/3) + v − I + L u,        ∂H/∂v = u − γ v + a,

and the dynamics descend H in u and ascend it in v (F = H + β ℓ(u)):

    τ_u du/dt = −∂F/∂u = u − u³/3 − v + I − L u − β ∂ℓ/∂u,
    τ_v dv/dt = +∂F/∂v = u + a − γ v.

The states are ordered **(v, u)** so that the activators u are the last layer, the one the nudge
acts on (as everywhere in ctep); the cost :class:`UnitSquaredError` reads chosen output units
of u. EP gradients: ∂H/∂g_ij = ½(u_i − u_j)², ∂H/∂W = −u xᵀ, ∂H/∂b = −u.

Each isolated unit with I = 0 (γ = 0.8, a = 0.7) rests at u ≈ −1.20, where 1 − u² < 0: the
u-block of ∇²H is positive and the v-block (−γ) negative, so every equilibrium on that branch is
a saddle of H; it is nevertheless a stable node/focus of the flow for every τ when the couplings
are non-negative. Larger inputs (I ≈ 0.5) move it to the middle branch, where it loses stability
through a Hopf bifurcation once τ_v is large (τ_v = 12.5 here): the units then oscillate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._states import States
from ..energies.base import InputTerm
from ..losses import Cost
from ..timeconstants import TimeConstants
from .field import SkewEnergy, SkewGradientField


def _edges(n: int, edges: str | Sequence[tuple[int, int]]) -> Tensor:
    if isinstance(edges, str):
        if edges == "all":
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        elif edges == "chain":
            pairs = [(i, i + 1) for i in range(n - 1)]
        elif edges == "ring":
            pairs = [(i, (i + 1) % n) for i in range(n)] if n > 2 else \
                [(i, i + 1) for i in range(n - 1)]
        else:
            raise ValueError(f"unknown edge set {edges!r}; use 'all', 'chain', 'ring' or a list "
                             "of pairs")
    else:
        pairs = [tuple(int(k) for k in p) for p in edges]
        for p in pairs:
            if len(p) != 2 or p[0] == p[1] or not (0 <= p[0] < n and 0 <= p[1] < n):
                raise ValueError(f"edge {p} is not a pair of distinct units in [0, {n})")
        if len({tuple(sorted(p)) for p in pairs}) != len(pairs):
            raise ValueError("edges must not repeat (a pair and its reverse count once)")
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long)
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


class FitzHughNagumo(SkewEnergy):
    """The FitzHugh–Nagumo energy H above; states ``(v, u)``, each of shape ``(n,)``.

    Args:
        n_units: number of (u, v) pairs.
        n_inputs: width of x (I = W x + b).
        edges: coupled pairs: ``"all"``, ``"chain"``, ``"ring"`` or a list of (i, j).
        gamma, a: the inhibitor's self-coupling γ and offset a (fixed).
        coupling: initial value of every coupling g_ij (≥ 0 keeps L positive semi-definite).
        input_scale: W ~ U(−c, c)/√n_inputs with c = input_scale; b starts at ``input_bias``.
        seed: seeds the draw of W (no global RNG).
    """

    def __init__(self, n_units: int, n_inputs: int, *,
                 edges: str | Sequence[tuple[int, int]] = "all", gamma: float = 0.8,
                 a: float = 0.7, coupling: float = 0.1, input_scale: float = 0.3,
                 input_bias: float = 0.0, seed: int = 0, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if int(n_units) != n_units or n_units < 1 or int(n_inputs) != n_inputs or n_inputs < 1:
            raise ValueError(f"n_units and n_inputs must be positive integers, got {n_units}, "
                             f"{n_inputs}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        n, m = int(n_units), int(n_inputs)
        dtype = dtype or torch.get_default_dtype()
        self.n_units, self.n_inputs = n, m
        self.state_shapes = ((n,), (n,))
        self.gamma = float(gamma)
        self.a = float(a)
        self.register_buffer("edge_index", _edges(n, edges).to(device), persistent=True)
        gen = torch.Generator().manual_seed(int(seed))
        w = (torch.rand(n, m, generator=gen, dtype=torch.float64) * 2 - 1) * (
            input_scale / m ** 0.5)
        self.couplings = nn.Parameter(torch.full((self.edge_index.shape[1],), float(coupling),
                                                 dtype=dtype, device=device))
        self.input_weight = nn.Parameter(w.to(dtype=dtype, device=device))
        self.input_bias = nn.Parameter(torch.full((n,), float(input_bias), dtype=dtype,
                                                  device=device))
        self.set_signs((-1.0, 1.0))  # v ascends H, u descends it

    def laplacian(self) -> Tensor:
        """L = D − G, ``(n, n)``: L_ii = Σ_j g_ij, L_ij = −g_ij."""
        n = self.n_units
        i, j = self.edge_index
        g = self.couplings
        lap = torch.zeros(n, n, dtype=g.dtype, device=g.device)
        lap = lap.index_put((i, j), -g, accumulate=True).index_put((j, i), -g, accumulate=True)
        return lap + torch.diag(-lap.sum(dim=1))

    def inputs(self, x: Tensor) -> Tensor:
        """I = W x + b per sample, ``(B, n)``."""
        return x @ self.input_weight.t() + self.input_bias

    def energy(self, x: Tensor, states: States) -> Tensor:
        v, u = states
        prim = 0.5 * u ** 2 - u ** 4 / 12
        lap_u = u @ self.laplacian()
        h = (-prim + u * v - 0.5 * self.gamma * v ** 2 + self.a * v - self.inputs(x) * u).sum(1)
        return h + 0.5 * (u * lap_u).sum(dim=1)

    def input_term(self, x: Tensor) -> Tensor:
        """I = W x + b, constant during a relaxation (the bound field computes it once)."""
        return self.inputs(x)

    def grad_states(self, x: Tensor, states: States, *, input_term: InputTerm = None) -> States:
        """(∂H/∂v, ∂H/∂u) in closed form (``input_term``: I = W x + b, computed when None)."""
        v, u = states
        inputs = self.inputs(x) if input_term is None else input_term
        dv = u - self.gamma * v + self.a
        du = -(u - u ** 3 / 3) + v - inputs + u @ self.laplacian()
        return dv, du

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"FitzHugh–Nagumo input must have shape (B, {self.n_inputs}), got "
                             f"{tuple(x.shape)}")


class UnitSquaredError(Cost):
    """ℓ = ½ Σ_k (u_{o_k} − y_k)² over chosen output units o (float targets ``(B, len(o))``).

    ∂ℓ/∂u = (u_o − y) scattered onto the units o, zero elsewhere.
    """

    def __init__(self, units: Sequence[int], n_units: int) -> None:
        super().__init__()
        units = [int(k) for k in units]
        if not units:
            raise ValueError("at least one output unit is needed")
        if len(set(units)) != len(units) or not all(0 <= k < n_units for k in units):
            raise ValueError(f"output units must be distinct indices in [0, {n_units}), got "
                             f"{units}")
        self.register_buffer("units", torch.tensor(units, dtype=torch.long), persistent=True)
        self.n_units = int(n_units)

    def _check(self, output: Tensor, y: Tensor) -> None:
        if output.dim() != 2 or output.shape[1] != self.n_units:
            raise ValueError(f"output state must have shape (B, {self.n_units}), got "
                             f"{tuple(output.shape)}")
        if tuple(y.shape) != (output.shape[0], self.units.numel()):
            raise ValueError(f"targets must have shape (B, {self.units.numel()}) (one value per "
                             f"output unit), got {tuple(y.shape)}")

    def forward(self, output: Tensor, y: Tensor) -> Tensor:
        self._check(output, y)
        d = output[:, self.units] - y.to(output.dtype)
        return 0.5 * (d * d).sum(dim=1)

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:
        self._check(output, y)
        g = torch.zeros_like(output)
        g[:, self.units] = output[:, self.units] - y.to(output.dtype)
        return g

    def logits(self, output: Tensor) -> Tensor:
        return output[:, self.units]

    def check_targets(self, y: Tensor, batch: int) -> None:
        super().check_targets(y, batch)
        if not y.is_floating_point() or y.dim() != 2 or y.shape[1] != self.units.numel():
            raise ValueError(f"targets must be float values of shape (B, {self.units.numel()}), "
                             f"got {tuple(y.shape)} {y.dtype}")


def fitzhugh_nagumo(n_units: int, n_inputs: int, outputs: int | Sequence[int] = 1, *,
                    tau_u: float | Tensor = 1.0, tau_v: float | Tensor = 12.5,
                    **energy_kwargs) -> SkewGradientField:
    """A ready FitzHugh–Nagumo network: :class:`FitzHughNagumo` energy, squared error on the
    output units (an int k: the last k units), τ_u and τ_v (numbers or per-unit tensors).

    Other keywords go to :class:`FitzHughNagumo` (edges, gamma, a, coupling, seed, dtype, ...).
    """
    energy = FitzHughNagumo(n_units, n_inputs, **energy_kwargs)
    n = energy.n_units
    if isinstance(outputs, int):
        if not 1 <= outputs <= n:
            raise ValueError(f"outputs must lie in [1, {n}], got {outputs}")
        outputs = range(n - outputs, n)
    dtype = energy.couplings.dtype
    device = energy.couplings.device
    taus = [torch.as_tensor(t, dtype=dtype, device=device).expand(n).clone()
            for t in (tau_v, tau_u)]
    return SkewGradientField(energy, UnitSquaredError(outputs, n), TimeConstants(taus))
