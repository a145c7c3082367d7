"""Dendritic neurons (after Kubo 2026) as an energy, so that the EP gradient theorem holds.

**The paper's rule** (an update, not an energy). Neuron layer l receives a basal input from the
layer below and an apical input from the layer above, each the mean of K sparse branches with a
ReLU, and s_l = σ(b_l + α a_l) with

    b_l = (1/K_b) Σ_k relu(M_k ⊙ W_k · s_{l−1}),    a_l = (1/K_a) Σ_k relu(N_k ⊙ B_k · s_{l+1}),

fixed random masks M, N (sparsity 0.5), K_b = 8, K_a = 2, α = 0.2. :class:`DendriticRule`
implements it. It is **not** the fixed-point map of any energy whose stationarity conditions are
c_l ⊙ (σ⁻¹(s_l) − b_l − α a_l) = 0 with constant positive per-neuron weights c_l (the class
EP needs, with c_L = 1 so that the nudge enters as in the rule): the mixed second derivatives of
such an E would have to agree,

    c_{l+1} ∂b_{l+1}/∂s_l = (α c_l ∂a_l/∂s_{l+1})ᵀ,

whose left side, (c_{l+1}/K_b) Σ_k D_k(s_l)(M_k ⊙ W_k) with D_k the branch ReLU gates, depends on
s_l only, and whose right side depends on s_{l+1} only; both would have to be constant over the
state box, i.e. no branch may ever switch (the ReLUs act as fixed linear maps) and then B must
be a tied, rescaled transpose of W. See docs/models.md for the full argument.

**The energy implemented here** keeps the basal pathway exactly and makes the apical one its
adjoint. Per coupling l → l+1 (l = 0..L−1, s_0 = x) with K branches, masks M_{l,k} and branch
biases c_{l,k}:

    g_l(r) = (1/K) Σ_k f(z_{l,k}),   z_{l,k} = (M_{l,k} ⊙ W_{l,k}) r + c_{l,k},   f = ReLU,

    Φ̃(x, r) = Σ_{l=0}^{L−1} λ_{l+1} r_{l+1}ᵀ g_l(r_l),     λ_l = α^{l−L}  (λ_L = 1),

    E(s) = Σ_l λ_l Σ_i G(s_{l,i}) − Φ̃(x, s)          (primitive form, G' = σ⁻¹),
    E(s) = Σ_l λ_l ½‖s_l‖² − Φ̃(x, ρ(s))              (classical form).

Stationarity, divided by λ_l, is exactly s_l = σ(b_l + α a_l) with

    b_l = g_{l−1}(s_{l−1})                                      (the paper's basal input),
    a_l = J_{g_l}(s_l)ᵀ s_{l+1} = (1/K) Σ_k (M_{l,k} ⊙ W_{l,k})ᵀ [f'(z_{l,k}) ⊙ s_{l+1}],

the apical input: top-down activity through the transposed basal weights of the layer above,
gated branch by branch by that branch's ReLU slope. The layer weights λ_l make the feedback gain
α while the bottom-up pathway stays unscaled; λ_L = 1 makes the nudge enter the output exactly as
in the rule, s_L = σ(b_L − β ∂ℓ/∂s_L). ∂E/∂θ carries the λ factors: EP's update for W_{l,k} is
λ_{l+1} times the contrastive Hebbian term, which is what makes it the exact gradient.

With ReLU branches, Φ̃ is piecewise bilinear in (r_l, r_{l+1}) and the stationarity map jumps on
the surfaces z_{l,k,i} = 0. EP (and the implicit reference) hold where the set of active branches
(and of saturated clipped units) is the same at the free and the nudged equilibria;
``branch_activation="softplus"`` (f(z) = log(1 + e^{κz})/κ, sharpness κ) gives a smooth energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .._states import States
from ..activations import Activation
from .base import InputTerm
from .conv import _clip_codes, _margin, layer_activations
from .layered import LayeredEnergy

BRANCH_ACTIVATIONS = ("relu", "softplus")


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(n) for n in sizes)
    if len(out) < 2 or any(n < 1 for n in out) or any(int(n) != n for n in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {list(sizes)}")
    return out


def _masks(k: int, n_out: int, n_in: int, sparsity: float, gen: torch.Generator) -> Tensor:
    """K fixed random masks: each connection kept with probability 1 − sparsity."""
    return torch.rand(k, n_out, n_in, generator=gen, dtype=torch.float64) >= sparsity


def _branch_weights(masks: Tensor, n_in: int, sparsity: float, gain: float,
                    gen: torch.Generator) -> Tensor:
    """U(−a, a) with a = gain/√(fan-in of a branch), zero off the mask."""
    bound = gain / math.sqrt(max(1.0, (1.0 - sparsity) * n_in))
    w = (torch.rand(*masks.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return w * masks


class DendriticHopfield(LayeredEnergy):
    """Layered net of dendritic neurons, energy-consistent form (module docstring).

    Args:
        sizes: widths from input to output (n_0, ..., n_L), at least two.
        branches: K, basal branches per neuron (default 8). There are no separate apical
            branches: a neuron's apical input runs through the basal branches of the layer above
            (their transposes, gated by their slopes); see docs/models.md.
        sparsity: fraction of connections each branch's fixed mask removes (default 0.5).
        apical_scale: α, the gain of the apical input (default 0.2).
        activation: soma σ for the hidden layers (default ``hard_sigmoid``);
            ``output_activation`` defaults to the same.
        branch_activation: ``"relu"`` (default, the paper's) or ``"softplus"`` (smooth).
        sharpness: κ of the softplus branches.
        alpha: clip value for ``relu_alpha`` somas (not the apical scale).
        form: ``"primitive"`` (default; the rule s = σ(b + α a) as a map) or ``"classical"``.
        seed: seeds the masks and the weights (no global RNG).
        init_scale: W ~ U(−a, a) with a = init_scale/√((1 − sparsity)·n_in); branch biases 0.
    """

    def __init__(self, sizes: Sequence[int], *, branches: int = 8, sparsity: float = 0.5,
                 apical_scale: float = 0.2,
                 activation: str | Activation | Sequence = "hard_sigmoid",
                 output_activation: str | Activation | None = None,
                 branch_activation: str = "relu", sharpness: float = 10.0,
                 alpha: float | None = None, form: str = "primitive", seed: int = 0,
                 init_scale: float = 1.0, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        sizes = _check_sizes(sizes)
        if int(branches) != branches or branches < 1:
            raise ValueError(f"branches must be a positive integer, got {branches!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        if not (apical_scale > 0 and math.isfinite(apical_scale)):
            raise ValueError(f"apical_scale must be positive and finite, got {apical_scale}")
        if branch_activation not in BRANCH_ACTIVATIONS:
            raise ValueError(f"unknown branch activation {branch_activation!r}; known: "
                             f"{', '.join(BRANCH_ACTIVATIONS)}")
        if not sharpness > 0:
            raise ValueError(f"sharpness must be positive, got {sharpness}")
        n_states = len(sizes) - 1
        super().__init__(layer_activations(activation, output_activation, n_states, alpha), form)
        self.sizes = sizes
        self.state_shapes = tuple((n,) for n in sizes[1:])
        self.branches = int(branches)
        self.sparsity = float(sparsity)
        self.apical_scale = float(apical_scale)
        self.branch_activation = branch_activation
        self.sharpness = float(sharpness)
        #: λ_l = α^{l−L}, l = 1..L (λ_L = 1)
        self.layer_weights = tuple(self.apical_scale ** (l - n_states)
                                   for l in range(1, n_states + 1))
        dtype = dtype or torch.get_default_dtype()
        gen = torch.Generator().manual_seed(int(seed))
        self.weights = nn.ParameterList()
        self.branch_biases = nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            m = _masks(self.branches, n_out, n_in, self.sparsity, gen)
            w = _branch_weights(m, n_in, self.sparsity, init_scale, gen)
            self.register_buffer(f"mask{i}", m.to(dtype=dtype, device=device))
            self.weights.append(nn.Parameter(w.to(dtype=dtype, device=device)))
            self.branch_biases.append(nn.Parameter(torch.zeros(self.branches, n_out, dtype=dtype,
                                                               device=device)))

    # --- branches -------------------------------------------------------------------------
    def mask(self, layer: int) -> Tensor:
        """The fixed mask M_l of coupling l → l+1, shape (K, n_{l+1}, n_l)."""
        return getattr(self, f"mask{layer}")

    def effective_weight(self, layer: int) -> Tensor:
        """M_l ⊙ W_l, shape (K, n_{l+1}, n_l) (gradients are masked through it)."""
        return self.weights[layer] * self.mask(layer)

    def branch_preactivations(self, layer: int, r: Tensor) -> Tensor:
        """z_{l,k} = (M ⊙ W)_{l,k} r + c_{l,k}, shape (B, K, n_{l+1})."""
        if r.is_complex():
            raise ValueError("dendritic branches are not holomorphic: complex states (holomorphic"
                             " EP) are not supported")
        w = self.effective_weight(layer).to(r.dtype)
        return torch.einsum("bn,kon->bko", r, w) + self.branch_biases[layer].to(r.dtype)

    def _f(self, z: Tensor) -> Tensor:
        if self.branch_activation == "relu":
            return torch.relu(z)
        return nnf.softplus(z, beta=self.sharpness)

    def _df(self, z: Tensor) -> Tensor:
        if self.branch_activation == "relu":
            return (z > 0).to(z.dtype)
        return torch.sigmoid(self.sharpness * z)

    def basal(self, layer: int, r: Tensor) -> Tensor:
        """g_l(r) = (1/K) Σ_k f(z_{l,k}): the basal input that layer l sends to layer l+1."""
        return self._f(self.branch_preactivations(layer, r)).mean(dim=1)

    # --- the primitive ----------------------------------------------------------------------
    def phi(self, x: Tensor, r: States) -> Tensor:
        """Φ̃(x, r) = Σ_l λ_{l+1} r_{l+1}ᵀ g_l(r_l), shape ``(B,)``."""
        below = (x, *r[:-1])
        total = 0.0
        for i, (lo, hi) in enumerate(zip(below, r, strict=True)):
            total = total + self.layer_weights[i] * (hi * self.basal(i, lo)).sum(dim=1)
        return total

    def phi_grad(self, x: Tensor, r: States, *, input_term: InputTerm = None) -> States:
        """The somatic input u_l = λ_l⁻¹ ∂Φ̃/∂r_l = b_l + α a_l, in closed form:
        b_l = g_{l−1}(r_{l−1}),  a_l = (1/K) Σ_k (M ⊙ W)_{l,k}ᵀ [f'(z_{l,k}) ⊙ r_{l+1}]."""
        below = (x, *r[:-1])
        out: list[Tensor] = []
        for i, lo in enumerate(below):
            if i == 0:
                out.append(self.input_term(x) if input_term is None else input_term)
                continue
            z = self.branch_preactivations(i, lo)
            out.append(self._f(z).mean(dim=1))
            # the apical input of layer i (state index i − 1)
            gate = self._df(z) * r[i].unsqueeze(1)
            w = self.effective_weight(i).to(lo.dtype)
            out[i - 1] = out[i - 1] + self.apical_scale * torch.einsum(
                "bko,kon->bn", gate, w) / self.branches
        return tuple(out)

    def input_term(self, x: Tensor) -> Tensor:
        """g_0(x), the input's basal drive of layer 1: constant during a relaxation (the bound
        field computes it once per batch)."""
        return self.basal(0, x)

    def phi_grad_autograd(self, x: Tensor, r: States) -> States:
        """u_l = λ_l⁻¹ ∂Φ̃/∂r_l by autograd (for checking the closed form)."""
        grads = super().phi_grad_autograd(x, r)
        return tuple(g / c for g, c in zip(grads, self.layer_weights, strict=True))

    # --- the energy with layer weights λ_l ------------------------------------------------------
    def energy(self, x: Tensor, states: States) -> Tensor:
        """E = Σ_l λ_l Σ G(s_l) − Φ̃(x, s) (primitive) or Σ_l λ_l ½‖s_l‖² − Φ̃(x, ρ(s))."""
        total = 0.0
        for c, a, s in zip(self.layer_weights, self.activations, states, strict=True):
            g = a.primitive(s) if self.form == "primitive" else 0.5 * s * s
            total = total + c * g.reshape(s.shape[0], -1).sum(dim=1)
        return total - self.phi(x, self._activities(states))

    def grad_states(self, x: Tensor, states: States, *, input_term: InputTerm = None) -> States:
        """∂E/∂s_l = λ_l (σ⁻¹(s_l) − u_l) (primitive) or λ_l (s_l − ρ'(s_l) u_l) (classical)."""
        g = super().grad_states(x, states, input_term=input_term)
        return tuple(c * t for c, t in zip(self.layer_weights, g, strict=True))

    # drive and stationarity are LayeredEnergy's, built on u = phi_grad: σ(u − n) − s, i.e.
    # −λ_l⁻¹ ∂F/∂s_l up to the monotone σ; λ_L = 1 so the nudge n = β ∂ℓ/∂s_L is unscaled.

    # --- active set -------------------------------------------------------------------------
    def active_set(self, x: Tensor, states: States) -> Tensor:
        """Per-sample codes of everything that switches: the ReLU branch gates (z > 0) and the
        clip region (below / inside / above) of clipped somas; shape ``(B, m)``."""
        r = self._activities(tuple(states))
        with torch.no_grad():
            codes = [_clip_codes(self, x, r)]
            if self.branch_activation == "relu":
                for i, lo in enumerate((x, *r[:-1])):
                    codes.append((self.branch_preactivations(i, lo) > 0)
                                 .reshape(x.shape[0], -1).to(torch.int8))
            return torch.cat(codes, dim=1)

    def active_set_margin(self, x: Tensor, states: States) -> Tensor:
        """Per-sample distance to the nearest switch: min |z| over ReLU branches and, for clipped
        somas, the distance of u to the clip bounds; shape ``(B,)``."""
        with torch.no_grad():
            m = _margin(self, x, states, ())
            if self.branch_activation == "relu":
                r = self._activities(tuple(states))
                for i, lo in enumerate((x, *r[:-1])):
                    z = self.branch_preactivations(i, lo).reshape(x.shape[0], -1)
                    m = torch.minimum(m, z.abs().amin(dim=1).double())
            return m

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"DendriticHopfield{list(self.sizes)} expects input of shape "
                             f"(B, {self.sizes[0]}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        names = ",".join(dict.fromkeys(a.name for a in self.activations))
        return (f"sizes={list(self.sizes)}, branches={self.branches}, sparsity={self.sparsity}, "
                f"apical_scale={self.apical_scale}, branch={self.branch_activation}, "
                f"activation={names}, form={self.form}")


class DendriticRule(nn.Module):
    """The paper's update rule as a map (not an energy; for comparison and for the proof that
    no energy of the EP class has it as its fixed-point map).

        u_l = b_l + α a_l,   b_l = (1/K_b) Σ_k relu(M_k ⊙ W_k s_{l−1}),
                             a_l = (1/K_a) Σ_k relu(N_k ⊙ B_k s_{l+1}),
        s_l ← σ(u_l)  (s_L with the nudge: σ(u_L − β ∂ℓ/∂s_L)),

    with independent apical weights B (K_a branches, masks N; the masks are folded into weights
    drawn zero off the mask). The top layer has no apical input.

    Args: as :class:`DendriticHopfield`, plus ``apical_branches`` (K_a, default 2).
    """

    def __init__(self, sizes: Sequence[int], *, branches: int = 8, apical_branches: int = 2,
                 sparsity: float = 0.5, apical_scale: float = 0.2,
                 activation: str | Activation | Sequence = "hard_sigmoid",
                 output_activation: str | Activation | None = None, alpha: float | None = None,
                 seed: int = 0, init_scale: float = 1.0,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        sizes = _check_sizes(sizes)
        for name, k in (("branches", branches), ("apical_branches", apical_branches)):
            if int(k) != k or k < 1:
                raise ValueError(f"{name} must be a positive integer, got {k!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        self.sizes = sizes
        self.apical_scale = float(apical_scale)
        self.activations = tuple(layer_activations(activation, output_activation,
                                                   len(sizes) - 1, alpha))
        dtype = dtype or torch.get_default_dtype()
        gen = torch.Generator().manual_seed(int(seed))
        self.basal_weights = nn.ParameterList()
        self.apical_weights = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            m = _masks(branches, n_out, n_in, sparsity, gen)
            self.basal_weights.append(nn.Parameter(
                _branch_weights(m, n_in, sparsity, init_scale, gen).to(dtype)))
        # apical: layer l (1..L−1) from layer l+1
        for n_lo, n_hi in zip(sizes[1:-1], sizes[2:], strict=True):
            m = _masks(apical_branches, n_lo, n_hi, sparsity, gen)
            self.apical_weights.append(nn.Parameter(
                _branch_weights(m, n_hi, sparsity, init_scale, gen).to(dtype)))

    def preactivation(self, x: Tensor, states: States) -> States:
        """u_l = b_l + α a_l for every layer (the masks are folded into the zero weights)."""
        below = (x, *states[:-1])
        out = [torch.relu(torch.einsum("bn,kon->bko", lo, w)).mean(dim=1)
               for lo, w in zip(below, self.basal_weights, strict=True)]
        for l, w in enumerate(self.apical_weights):
            out[l] = out[l] + self.apical_scale * torch.relu(
                torch.einsum("bn,kon->bko", states[l + 1], w)).mean(dim=1)
        return tuple(out)

    def step(self, x: Tensor, states: States) -> States:
        """One application of the rule: s ← σ(u(s))."""
        return tuple(a(u) for a, u in zip(self.activations, self.preactivation(x, states),
                                          strict=True))
