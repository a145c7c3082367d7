"""Convolutional energies: conv layers with pooling and a dense head (Laborieux et al. 2021).

A network is a set of **couplings** between layers, each a bilinear-like term of the primitive

    Φ(x, r) = Σ_c ⟨r_dst(c), A_c(r_src(c))⟩ + Σ_l ⟨b_l, r_l⟩,       r_0 = x,

where ⟨·,·⟩ is the full contraction over channels and space and A_c is one of

* ``conv``:  A(r) = P(w ⋆ r)  — a 2-D convolution (kernel k, stride, zero padding) followed by
  non-overlapping p×p pooling P ∈ {max, avg, none} (stride p, windows that do not fit dropped);
* ``dense``: A(r) = W·flatten(r).

Biases are per channel on feature maps (shape (C,), as a conv bias, which commutes with either
pooling) and per unit on vectors. The energy is built from Φ in the two forms of
:class:`~ctep.energies.layered.LayeredEnergy` (primitive: E = Σ G(s) − Φ(x, s); classical:
E = ½‖s‖² − Φ(x, ρ(s))).

**Closed-form ∂Φ/∂r.** For every coupling,

    ∂Φ/∂r_dst ∋ A(r_src) = P(w ⋆ r_src),
    ∂Φ/∂r_src ∋ A'(r_src)ᵀ r_dst = w ⋆ᵀ Pᵀ(r_dst),

where ``w ⋆ᵀ`` is the transposed convolution (the adjoint of ``w ⋆``: correlation with the
spatially flipped kernel, channels swapped, the stride dilating its input, ``output_padding``
restoring the input size) and Pᵀ is the unpooling: for avg pooling each value spread as 1/p² over
its window, for max pooling each value put back at its window's arg-max (``max_unpool2d``), zero
elsewhere, including the rows/columns that pooling dropped. They are tested equal to autograd of
Φ to 1e-12 in float64.

**What is differentiable with max pooling.** P_max(z) is piecewise linear in z, so
⟨r_dst, P_max(w ⋆ r_src)⟩ is linear in r_dst and in w, and in r_src it is a sum of maxima of
linear forms weighted by r_dst: continuous, and differentiable wherever every pooling window has
a **unique** maximiser (everywhere except on the tie surfaces, a null set). On each open region
where the arg-max pattern is fixed, Φ is bilinear (its Hessian is locally constant) and E is as
smooth as the activations' G. On a tie, ∂Φ/∂r_src is set-valued; torch (and ctep's closed form,
which takes the arg-max from ``max_pool2d``) picks the first maximiser in the window. The EP
theorem (THEORY.md §0) applies when the free and the nudged equilibria lie in the same region
(the same arg-maxes, and, for clipped activations, the same saturated units);
:meth:`CouplingEnergy.active_set_margin` measures the distance to the nearest switch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .._states import States
from ..activations import Activation, get_activation
from .base import InputTerm
from .layered import LayeredEnergy

POOLS = ("max", "avg", "none")
Shape = tuple[int, ...]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution: ⌊(size + 2·padding − kernel)/stride⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


# --- couplings -----------------------------------------------------------------------------------
class Coupling(nn.Module):
    """One term ⟨r_dst, A(r_src)⟩ of Φ between layer ``src`` and layer ``dst`` (0 is the input).

    Subclasses implement :meth:`apply` (A(r_src)) and :meth:`apply_and_adjoint` (A(r_src) and
    A'(r_src)ᵀ r_dst together, sharing the forward work).
    """

    src: int
    dst: int
    in_shape: Shape
    out_shape: Shape
    weight: nn.Parameter

    def apply(self, r_src: Tensor) -> Tensor:  # pragma: no cover - abstract
        """A(r_src), shape ``(B, *out_shape)``."""
        raise NotImplementedError

    def apply_and_adjoint(self, r_src: Tensor, r_dst: Tensor,
                          adjoint: bool = True) -> tuple[Tensor, Tensor | None]:
        """(A(r_src), A'(r_src)ᵀ r_dst) in closed form (the second is None if not ``adjoint``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def pair(self, r_src: Tensor, r_dst: Tensor) -> Tensor:
        """⟨r_dst, A(r_src)⟩ per sample, shape ``(B,)``."""
        return (r_dst * self.apply(r_src)).reshape(r_dst.shape[0], -1).sum(dim=1)

    def margin(self, r_src: Tensor) -> Tensor | None:
        """Per-sample distance of A's pre-activation to its nearest kink (None if A is linear)."""
        return None

    def pattern(self, r_src: Tensor) -> Tensor | None:
        """Per-sample codes of A's active set, shape ``(B, m)`` (None if A is linear)."""
        return None

    def _w(self, like: Tensor) -> Tensor:
        w = self.weight
        return w if w.dtype == like.dtype else w.to(like.dtype)


class ConvCoupling(Coupling):
    """A(r) = P(w ⋆ r): ``conv2d`` (kernel, stride, zero padding, no bias) then p×p pooling.

    Args:
        src, dst: layer indices (0 = the input x).
        in_shape: (C_in, H, W) of the source layer.
        out_channels, kernel, stride, padding: the convolution.
        pool: ``"max"``, ``"avg"`` or ``"none"``; pool_size: p (windows p×p, stride p).
        weight: initial kernel of shape (C_out, C_in, k, k).
    """

    def __init__(self, src: int, dst: int, in_shape: Sequence[int], out_channels: int,
                 kernel: int, *, stride: int = 1, padding: int = 0, pool: str = "none",
                 pool_size: int = 2, weight: Tensor) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; known: {', '.join(POOLS)}")
        in_shape = tuple(int(n) for n in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"a convolution needs a (C, H, W) source layer, got shape {in_shape}")
        for name, v, low in (("kernel", kernel, 1), ("stride", stride, 1),
                             ("padding", padding, 0), ("pool_size", pool_size, 1)):
            if int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {v!r}")
        c, h, w = in_shape
        ho, wo = (conv_output_size(n, kernel, stride, padding) for n in (h, w))
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {kernel} (padding {padding}) does not fit the {h}x{w} input"
                             f" of layer {src}")
        if pool != "none":
            if ho < pool_size or wo < pool_size:
                raise ValueError(f"{pool_size}x{pool_size} pooling does not fit the {ho}x{wo} "
                                 f"convolution output of layer {src} -> {dst}")
            ho, wo = ho // pool_size, wo // pool_size
        self.src, self.dst = int(src), int(dst)
        self.in_shape = in_shape
        self.out_shape = (int(out_channels), ho, wo)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
        self.pool, self.pool_size = pool, int(pool_size)
        if tuple(weight.shape) != (out_channels, c, kernel, kernel):
            raise ValueError(f"conv weight must have shape {(out_channels, c, kernel, kernel)}, "
                             f"got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight)
        h_conv = conv_output_size(h, kernel, stride, padding)
        w_conv = conv_output_size(w, kernel, stride, padding)
        self._conv_hw = (h_conv, w_conv)
        # conv_transpose2d gives (n_out − 1)·stride − 2·padding + k; output_padding adds the rest
        self._output_padding = tuple(n - ((m - 1) * stride - 2 * padding + kernel)
                                     for n, m in ((h, h_conv), (w, w_conv)))

    # the convolution and its adjoint
    def conv(self, r: Tensor) -> Tensor:
        """z = w ⋆ r (no bias)."""
        return nnf.conv2d(r, self._w(r), stride=self.stride, padding=self.padding)

    def conv_adjoint(self, g: Tensor) -> Tensor:
        """w ⋆ᵀ g: the transposed convolution (adjoint of :meth:`conv`), shape of the source."""
        return nnf.conv_transpose2d(g, self._w(g), stride=self.stride, padding=self.padding,
                                    output_padding=self._output_padding)

    # pooling and its adjoint (non-overlapping windows)
    def _crop(self, z: Tensor) -> Tensor:
        p = self.pool_size
        _, ho, wo = self.out_shape
        return z[..., :ho * p, :wo * p]

    def _windows(self, z: Tensor) -> Tensor:
        """(B, C, Ho, Wo, p·p): the pooling windows of z."""
        p = self.pool_size
        b, c, ho, wo = z.shape[0], *self.out_shape
        return (self._crop(z).reshape(b, c, ho, p, wo, p).permute(0, 1, 2, 4, 3, 5)
                .reshape(b, c, ho, wo, p * p))

    def _unpool_avg(self, g: Tensor) -> Tensor:
        p = self.pool_size
        b, c, ho, wo = g.shape
        up = (g / (p * p)).reshape(b, c, ho, 1, wo, 1).expand(b, c, ho, p, wo, p)
        up = up.reshape(b, c, ho * p, wo * p)
        hc, wc = self._conv_hw
        return nnf.pad(up, (0, wc - wo * p, 0, hc - ho * p))

    def apply(self, r_src: Tensor) -> Tensor:
        z = self.conv(r_src)
        if self.pool == "max":
            _check_real(z, "max pooling")
            return nnf.max_pool2d(z, self.pool_size)
        if self.pool == "avg":
            return self._avg(z)
        return z

    def _avg(self, z: Tensor) -> Tensor:
        """p×p average pooling (``avg_pool2d``; by reshaping for complex states)."""
        if z.is_complex():
            return self._windows(z).mean(dim=-1)
        return nnf.avg_pool2d(z, self.pool_size)

    def apply_and_adjoint(self, r_src: Tensor, r_dst: Tensor,
                          adjoint: bool = True) -> tuple[Tensor, Tensor | None]:
        z = self.conv(r_src)
        if self.pool == "max":
            _check_real(z, "max pooling")
            out, idx = nnf.max_pool2d(z, self.pool_size, return_indices=True)
            if not adjoint:
                return out, None
            up = nnf.max_unpool2d(r_dst, idx, self.pool_size, output_size=self._conv_hw)
            return out, self.conv_adjoint(up)
        if self.pool == "avg":
            out = self._avg(z)
            return out, (self.conv_adjoint(self._unpool_avg(r_dst)) if adjoint else None)
        return z, (self.conv_adjoint(r_dst) if adjoint else None)

    def margin(self, r_src: Tensor) -> Tensor | None:
        """Max pooling: the smallest gap between the largest and the second largest value in a
        window (0 on a tie, where the arg-max and hence ∂Φ/∂r_src switch)."""
        if self.pool != "max" or self.pool_size == 1:
            return None
        top = self._windows(self.conv(r_src).detach()).topk(2, dim=-1).values
        return (top[..., 0] - top[..., 1]).reshape(r_src.shape[0], -1).amin(dim=1)

    def pattern(self, r_src: Tensor) -> Tensor | None:
        """Max pooling: the arg-max position within each window."""
        if self.pool != "max" or self.pool_size == 1:
            return None
        idx = self._windows(self.conv(r_src).detach()).argmax(dim=-1)
        return idx.reshape(r_src.shape[0], -1).to(torch.int16)

    def extra_repr(self) -> str:
        return (f"{self.src}->{self.dst}, {self.in_shape}->{self.out_shape}, kernel={self.kernel},"
                f" stride={self.stride}, padding={self.padding}, pool={self.pool}"
                + (f"({self.pool_size})" if self.pool != "none" else ""))


class DenseCoupling(Coupling):
    """A(r) = W·flatten(r), W of shape (n_out, n_in) with n_in = prod(in_shape)."""

    def __init__(self, src: int, dst: int, in_shape: Sequence[int], out_features: int, *,
                 weight: Tensor) -> None:
        super().__init__()
        self.src, self.dst = int(src), int(dst)
        self.in_shape = tuple(int(n) for n in in_shape)
        self.out_shape = (int(out_features),)
        n_in = math.prod(self.in_shape)
        if tuple(weight.shape) != (out_features, n_in):
            raise ValueError(f"dense weight must have shape {(out_features, n_in)}, got "
                             f"{tuple(weight.shape)}")
        self.weight = nn.Parameter(weight)

    def apply(self, r_src: Tensor) -> Tensor:
        return r_src.reshape(r_src.shape[0], -1) @ self._w(r_src).T

    def apply_and_adjoint(self, r_src: Tensor, r_dst: Tensor,
                          adjoint: bool = True) -> tuple[Tensor, Tensor | None]:
        w = self._w(r_src)
        out = r_src.reshape(r_src.shape[0], -1) @ w.T
        if not adjoint:
            return out, None
        return out, (r_dst @ w).reshape(r_src.shape)

    def extra_repr(self) -> str:
        return f"{self.src}->{self.dst}, {self.in_shape}->{self.out_shape}"


def _check_real(z: Tensor, what: str) -> None:
    if z.is_complex():
        raise ValueError(f"{what} is not holomorphic: complex states (holomorphic EP) need "
                         "pool='avg' or 'none'")


# --- the energy ----------------------------------------------------------------------------------
class CouplingEnergy(LayeredEnergy):
    """A layered energy whose primitive is a sum of couplings plus biases (see module docstring).

    Args:
        input_shape: per-sample shape of x (layer 0).
        state_shapes: per-sample shapes of the states s_1..s_L.
        couplings: the couplings; each layer 1..L must receive at least one, and every coupling
            into a layer must produce that layer's shape.
        activations: one per state layer.
        form: ``"primitive"`` or ``"classical"``.
        dtype, device: of the biases (zero at start).
    """

    def __init__(self, input_shape: Sequence[int], state_shapes: Sequence[Sequence[int]],
                 couplings: Sequence[Coupling], activations: Sequence[Activation], *,
                 form: str = "primitive", dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(activations, form)
        self.input_shape = tuple(int(n) for n in input_shape)
        self.state_shapes = tuple(tuple(int(n) for n in s) for s in state_shapes)
        if len(self.activations) != len(self.state_shapes):
            raise ValueError(f"{len(self.activations)} activations for "
                             f"{len(self.state_shapes)} state layers")
        shapes = (self.input_shape, *self.state_shapes)
        fed = set()
        for c in couplings:
            if not (0 <= c.src < len(shapes) and 1 <= c.dst < len(shapes)) or c.src == c.dst:
                raise ValueError(f"coupling {c.src}->{c.dst} does not join two layers of "
                                 f"0..{len(shapes) - 1} (0 is the input, which receives nothing)")
            if c.in_shape != shapes[c.src]:
                raise ValueError(f"coupling {c.src}->{c.dst} expects source shape {c.in_shape}, "
                                 f"layer {c.src} has {shapes[c.src]}")
            if c.out_shape != shapes[c.dst]:
                raise ValueError(f"coupling {c.src}->{c.dst} produces shape {c.out_shape}, "
                                 f"layer {c.dst} has {shapes[c.dst]}")
            fed.add(c.dst)
        missing = sorted(set(range(1, len(shapes))) - fed)
        if missing:
            raise ValueError(f"layers {missing} receive no coupling")
        self.couplings = nn.ModuleList(couplings)
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(s[0], dtype=dtype or torch.get_default_dtype(),
                                     device=device))
            for s in self.state_shapes)

    def _bias(self, layer: int, like: Tensor) -> Tensor:
        """b_l broadcast over the layer's spatial dimensions."""
        b = self.biases[layer]
        b = b if b.dtype == like.dtype else b.to(like.dtype)
        return b.reshape(b.shape[0], *([1] * (like.dim() - 2)))

    def phi(self, x: Tensor, r: States) -> Tensor:
        """Φ(x, r) = Σ_c ⟨r_dst, A_c(r_src)⟩ + Σ_l ⟨b_l, r_l⟩, shape ``(B,)``."""
        layers = (x, *r)
        total = 0.0
        for c in self.couplings:
            total = total + c.pair(layers[c.src], layers[c.dst])
        for i, s in enumerate(r):
            total = total + (s * self._bias(i, s)).reshape(s.shape[0], -1).sum(dim=1)
        return total

    def phi_grad(self, x: Tensor, r: States, *, input_term: InputTerm = None) -> States:
        """∂Φ/∂r_l = b_l + Σ_{c: dst=l} A_c(r_src) + Σ_{c: src=l} A_c'(r_l)ᵀ r_dst (closed form:
        convolutions, transposed convolutions and unpooling; the couplings from the input give
        :meth:`input_term`)."""
        layers = (x, *r)
        grads: list[Tensor | None] = [None] * len(r)
        from_input = iter(self.input_term(x) if input_term is None else input_term)

        def add(i: int, g: Tensor) -> None:
            grads[i] = g if grads[i] is None else grads[i] + g

        for c in self.couplings:
            if c.src == 0:
                add(c.dst - 1, next(from_input))
                continue
            fwd, adj = c.apply_and_adjoint(layers[c.src], layers[c.dst])
            add(c.dst - 1, fwd)
            add(c.src - 1, adj)
        return tuple(g + self._bias(i, g) for i, g in enumerate(grads))

    def input_term(self, x: Tensor) -> tuple[Tensor, ...]:
        """A_c(x) for each coupling from the input, in coupling order: constant during a
        relaxation (the bound field computes them once per batch)."""
        return tuple(c.apply(x) for c in self.couplings if c.src == 0)

    def active_set_margin(self, x: Tensor, states: States) -> Tensor:
        """Per-sample distance to the nearest switch of the active set, shape ``(B,)``: the
        smallest gap between the top two values of a max-pooling window, and, for clipped
        activations, the smallest distance of a pre-activation ∂Φ/∂s to a clip bound. EP (and
        the implicit reference) are exact only while this stays positive along the nudge."""
        return _margin(self, x, states, ((self.couplings, (x, *self._activities(states))),))

    def active_set(self, x: Tensor, states: States) -> Tensor:
        """Per-sample codes of everything that switches, shape ``(B, m)``: the arg-max in each
        max-pooling window and the clip region of each clipped unit. EP is exact (as β → 0)
        when these are the same at the free and the nudged equilibria."""
        with torch.no_grad():
            r = self._activities(tuple(states))
            layers = (x, *r)
            codes = [_clip_codes(self, x, r)]
            for c in self.couplings:
                p = c.pattern(layers[c.src])
                if p is not None:
                    codes.append(p.to(torch.int16))
            return torch.cat([t.to(torch.int16) for t in codes], dim=1)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ValueError(f"{type(self).__name__} expects input of shape "
                             f"(B, {', '.join(map(str, self.input_shape))}), got "
                             f"{tuple(x.shape)}")


def _clip_codes(energy: LayeredEnergy, x: Tensor, r: States) -> Tensor:
    """Per sample, the clip region of each clipped unit's pre-activation ∂Φ/∂r: 0 below the
    box, 1 inside, 2 above; shape ``(B, m)`` (m = 0 without clipped activations)."""
    with torch.no_grad():
        codes = [torch.zeros(x.shape[0], 0, dtype=torch.int8, device=x.device)]
        for a, u in zip(energy.activations, energy.phi_grad(x, r), strict=True):
            if a.bounded:
                u = u.reshape(u.shape[0], -1).real
                codes.append((u > a.low).to(torch.int8) + (u >= a.high).to(torch.int8))
        return torch.cat(codes, dim=1)


def _margin(energy: LayeredEnergy, x: Tensor, states: States, groups) -> Tensor:
    """Shared by the conv and dendritic energies: clip margins of the pre-activations plus the
    couplings' own margins."""
    with torch.no_grad():
        r = energy._activities(tuple(states))
        margins = [torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)]
        for a, u in zip(energy.activations, energy.phi_grad(x, r), strict=True):
            if a.bounded:
                u = u.reshape(u.shape[0], -1).real.double()
                m = torch.minimum((u - a.low).abs(), (u - a.high).abs()).amin(dim=1)
                margins.append(m)
        for couplings, layers in groups:
            for c in couplings:
                m = c.margin(layers[c.src])
                if m is not None:
                    margins.append(m.double())
        return torch.stack(margins).amin(dim=0)


# --- helpers shared by the builders --------------------------------------------------------------
def init_weight(shape: Sequence[int], fan_in: int, gain: float,
                gen: torch.Generator, dtype: torch.dtype | None,
                device: torch.device | str | None) -> Tensor:
    """U(−a, a) with a = gain/√fan_in, drawn in float64 on the CPU from ``gen``, then cast."""
    bound = gain / math.sqrt(fan_in)
    w = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return w.to(dtype=dtype or torch.get_default_dtype(), device=device)


def per_layer(value, n: int, name: str) -> list:
    """A scalar repeated n times, or a sequence of length n (clear error otherwise)."""
    if isinstance(value, (str, int, float)) or value is None:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values given for {n} layers")
    return values


def layer_activations(activation, output_activation, n_states: int,
                      alpha: float | None) -> list[Activation]:
    """Hidden activation(s) for the first n−1 state layers and the output activation (default:
    the hidden one)."""
    if isinstance(activation, (str, Activation)):
        hidden = [get_activation(activation, alpha)] * (n_states - 1)
    else:
        hidden = [get_activation(a, alpha) for a in activation]
        if len(hidden) != n_states - 1:
            raise ValueError(f"{len(hidden)} hidden activations given for {n_states - 1} hidden "
                             "layers")
    out = (hidden[-1] if hidden else get_activation(activation, alpha)) \
        if output_activation is None else get_activation(output_activation, alpha)
    return [*hidden, out]


def check_input_shape(input_shape: Sequence[int]) -> Shape:
    shape = tuple(int(n) for n in input_shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got "
                         f"{tuple(input_shape)}")
    return shape


def _positive_ints(values, name: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 or v != orig for v, orig in zip(out, values, strict=True)):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got "
                         f"{list(values)}")
    return out


# --- Laborieux-style convolutional Hopfield network ----------------------------------------------
class ConvHopfield(CouplingEnergy):
    """Conv layers, each followed by pooling, then dense layers (Laborieux et al. 2021; VGG5 of
    E P & Srinivasan 2025 with ``channels=(128, 256, 512, 512)``).

    States: one (C_i, H_i, W_i) feature map per conv layer, the dense hidden layers, and the
    output (n_out,). The primitive is

        Φ(x, r) = Σ_i ⟨r_i, P_i(w_i ⋆ r_{i−1})⟩ + Σ_j r_{j+1}ᵀ W_j flatten(r_j) + Σ_l ⟨b_l, r_l⟩,

    with r_0 = x (see the module docstring for the closed-form ∂Φ/∂r and max pooling).

    Args:
        input_shape: (C, H, W) of the input, e.g. (3, 32, 32) for CIFAR-10, (1, 28, 28) for
            Fashion-MNIST.
        channels: output channels of each conv layer (at least one).
        n_out: output units.
        kernel, padding, stride, pool, pool_size: per conv layer, a value or a sequence. Pools:
            ``"max"`` (default), ``"avg"``, ``"none"``.
        hidden: widths of dense hidden layers between the conv stack and the output.
        activation: hidden activation name (or one per hidden layer); ``output_activation``
            defaults to the same.
        alpha: clip value for ``relu_alpha``.
        form: ``"primitive"`` (default) or ``"classical"``.
        seed: seeds the weight draw (no global RNG).
        init_scale: gain per weight tensor (a value or one per coupling): U(−a, a) with
            a = gain/√fan_in, fan_in = C_in·k² (conv) or n_in (dense). Biases start at zero.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], n_out: int, *,
                 kernel: int | Sequence[int] = 3, padding: int | Sequence[int] = 1,
                 stride: int | Sequence[int] = 1, pool: str | Sequence[str] = "max",
                 pool_size: int | Sequence[int] = 2, hidden: Sequence[int] = (),
                 activation: str | Activation | Sequence = "hard_sigmoid",
                 output_activation: str | Activation | None = None, alpha: float | None = None,
                 form: str = "primitive", seed: int = 0,
                 init_scale: float | Sequence[float] = 1.0, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        input_shape = check_input_shape(input_shape)
        channels = _positive_ints(channels, "channels")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden) or int(n_out) < 1:
            raise ValueError(f"hidden widths and n_out must be positive, got {hidden}, {n_out}")
        n_conv = len(channels)
        kernels = per_layer(kernel, n_conv, "kernel")
        paddings = per_layer(padding, n_conv, "padding")
        strides = per_layer(stride, n_conv, "stride")
        pools = per_layer(pool, n_conv, "pool")
        pool_sizes = per_layer(pool_size, n_conv, "pool_size")
        n_couplings = n_conv + len(hidden) + 1
        gains = per_layer(init_scale, n_couplings, "init_scale")
        gen = torch.Generator().manual_seed(int(seed))
        couplings: list[Coupling] = []
        shape = input_shape
        shapes = []
        for i in range(n_conv):
            k = kernels[i]
            w = init_weight((channels[i], shape[0], k, k), shape[0] * k * k, gains[i], gen,
                            dtype, device)
            c = ConvCoupling(i, i + 1, shape, channels[i], k, stride=strides[i],
                             padding=paddings[i], pool=pools[i], pool_size=pool_sizes[i],
                             weight=w)
            couplings.append(c)
            shape = c.out_shape
            shapes.append(shape)
        for j, width in enumerate((*hidden, int(n_out))):
            n_in = math.prod(shape)
            src = n_conv + j
            w = init_weight((width, n_in), n_in, gains[n_conv + j], gen, dtype, device)
            couplings.append(DenseCoupling(src, src + 1, shape, width, weight=w))
            shape = (width,)
            shapes.append(shape)
        acts = layer_activations(activation, output_activation, len(shapes), alpha)
        super().__init__(input_shape, shapes, couplings, acts, form=form, dtype=dtype,
                         device=device)
        self.channels = channels
        self.hidden = hidden
        self.n_out = int(n_out)

    def extra_repr(self) -> str:
        names = ",".join(dict.fromkeys(a.name for a in self.activations))
        return (f"input={self.input_shape}, channels={list(self.channels)}, "
                f"hidden={list(self.hidden)}, n_out={self.n_out}, activation={names}, "
                f"form={self.form}")


#: input shapes of the datasets the presets are sized for
DATASET_SHAPES: dict[str, Shape] = {
    "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist": (1, 28, 28),
    "fmnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "kmnist": (1, 28, 28),
}
DATASET_CLASSES: dict[str, int] = {"cifar100": 100}


def dataset_shape(dataset: str) -> tuple[Shape, int]:
    """(input shape, number of classes) of a dataset name."""
    key = str(dataset).lower().replace("-", "_")
    if key not in DATASET_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_SHAPES)}")
    return DATASET_SHAPES[key], DATASET_CLASSES.get(key, 10)


#: the weight gains of E P & Srinivasan's code for VGG5 (``dhcnresnet.py`` defaults)
VGG5_GAINS = (0.4, 0.7, 0.6, 0.3, 0.6)


def vgg5(dataset: str = "cifar10", *, channels: Sequence[int] = (128, 256, 512, 512),
         activation: str = "relu6", output_activation: str | None = "identity",
         **kwargs) -> ConvHopfield:
    """VGG5 of E P & Srinivasan 2025 (also Laborieux et al. 2021's architecture): four 3×3 conv
    layers with padding 1, each followed by 2×2 max pooling, and a dense output layer.

    CIFAR-10 (3×32×32): feature maps 32→16→8→4→2. Fashion-MNIST is taken at its native 1×28×28
    (28→14→7→3→1; max pooling drops the last row/column of the odd 7×7 map); the paper pads it
    with 2 zero pixels per side to 32×32 first, which ``vgg5("fmnist", input_shape=(1, 32, 32))``
    reproduces with padded images. Other keyword arguments go to :class:`ConvHopfield`
    (``input_shape`` and ``n_out`` override the dataset's); ``init_scale`` defaults to the paper's
    gains :data:`VGG5_GAINS` (their init is U(±gain/√fan_in), as ctep's).
    """
    shape, classes = dataset_shape(dataset)
    input_shape = kwargs.pop("input_shape", shape)
    n_out = kwargs.pop("n_out", classes)
    if len(tuple(channels)) != 4:
        raise ValueError(f"VGG5 has 4 conv layers, got channels {list(channels)} (use "
                         "ConvHopfield for other depths)")
    kwargs.setdefault("init_scale", VGG5_GAINS)
    return ConvHopfield(input_shape, channels, n_out, kernel=3, padding=1,
                        pool=kwargs.pop("pool", "max"), activation=activation,
                        output_activation=output_activation, **kwargs)
