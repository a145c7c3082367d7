"""Model registry: architectures by name, built from plain config values.

``MODELS`` maps a name to a builder that takes keyword arguments of plain types (ints, floats,
strings, lists; ``dtype`` may be a torch dtype or its name) and returns an
:class:`~ctep.energies.base.Energy`:

=====================  ==========================================================================
name                   builds
=====================  ==========================================================================
``dense``              :class:`~ctep.energies.DenseHopfield` (``sizes``)
``conv``               :class:`~ctep.energies.ConvHopfield` (``channels`` + ``dataset`` or
                       ``input_shape``)
``vgg5``               :func:`~ctep.energies.vgg5`: 128-256-512-512, 3×3, max pool, relu6
``hopfield-resnet``    :class:`~ctep.energies.HopfieldResNet` (``channels`` + ``dataset`` or
                       ``input_shape``)
``hopfield-resnet13``  :func:`~ctep.energies.hopfield_resnet13`: 4 blocks, relu6
``dendritic``          :class:`~ctep.energies.DendriticHopfield` (``sizes``)
``dendritic-mnist``    dendritic 784-256-10 (Kubo 2026's MNIST net)
``dendritic-fmnist``   dendritic 784-256-256-10 (Fashion-MNIST / KMNIST)
=====================  ==========================================================================

:func:`build_model` checks the name and the option names and gives a clear error for either.
:func:`small_instance` builds a tiny random instance of ``dense``, ``conv``, ``hopfield-resnet``
or ``dendritic`` in float64 for gradient checks, its couplings rescaled so that the fixed-point
map contracts away from kinks (unique, stable equilibrium) and its biases set so that units sit
inside their clip box; inputs are meant to be drawn from U(0, 1).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from ._linalg import spectral_norm
from .energies.base import Energy
from .energies.conv import ConvHopfield, CouplingEnergy, DenseCoupling, _clip_codes, _margin, vgg5
from .energies.dendritic import DendriticHopfield
from .energies.dense import DenseHopfield
from .energies.resnet import HopfieldResNet, hopfield_resnet13

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "double": torch.float64, "float": torch.float32}


def _dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; known: {', '.join(DTYPES)}")
    return DTYPES[key]


def _shape_from(dataset: str | None, input_shape, n_out) -> tuple[tuple[int, ...], int]:
    from .energies.conv import dataset_shape

    if dataset is not None:
        shape, classes = dataset_shape(dataset)
    elif input_shape is None:
        raise ValueError("give dataset= (cifar10, cifar100, mnist, fmnist, kmnist) or "
                         "input_shape=(C, H, W)")
    else:
        shape, classes = None, 10
    shape = tuple(input_shape) if input_shape is not None else shape
    return shape, int(n_out) if n_out is not None else classes


# --- builders -------------------------------------------------------------------------------------
def build_dense(sizes=(784, 500, 10), activation="hard_sigmoid", form="primitive", alpha=None,
                seed=0, init_scale=1.0, dtype=None, device=None) -> DenseHopfield:
    """Layered dense Hopfield net, ``sizes`` from input to output."""
    return DenseHopfield(tuple(sizes), activation, form=form, alpha=alpha, seed=seed,
                         init_scale=init_scale, dtype=_dtype(dtype), device=device)


def build_conv(channels=(128, 256, 512, 512), dataset=None, input_shape=None, n_out=None,
               kernel=3, padding=1, stride=1, pool="max", pool_size=2, hidden=(),
               activation="hard_sigmoid", output_activation=None, alpha=None, form="primitive",
               seed=0, init_scale=1.0, dtype=None, device=None) -> ConvHopfield:
    """Conv layers with pooling and a dense head (Laborieux et al. 2021)."""
    shape, n_out = _shape_from(dataset, input_shape, n_out)
    return ConvHopfield(shape, tuple(channels), n_out, kernel=_seq(kernel),
                        padding=_seq(padding), stride=_seq(stride), pool=_seq(pool),
                        pool_size=_seq(pool_size), hidden=tuple(hidden), activation=activation,
                        output_activation=output_activation, alpha=alpha, form=form, seed=seed,
                        init_scale=_seq(init_scale), dtype=_dtype(dtype), device=device)


def build_vgg5(dataset="cifar10", input_shape=None, n_out=None,
               channels=(128, 256, 512, 512), activation="relu6", output_activation="identity",
               alpha=None, form="primitive", seed=0, init_scale=None, dtype=None,
               device=None) -> ConvHopfield:
    """VGG5 (E P & Srinivasan 2025; :func:`ctep.energies.vgg5`)."""
    kw = _given(input_shape=_tuple(input_shape), n_out=n_out, init_scale=_seq(init_scale))
    return vgg5(dataset, channels=tuple(channels), activation=activation,
                output_activation=output_activation, alpha=alpha, form=form, seed=seed,
                dtype=_dtype(dtype), device=device, **kw)


def build_hopfield_resnet(channels=(128, 256, 512, 512), dataset=None, input_shape=None,
                          n_out=None, activation="relu6", output_activation="identity",
                          alpha=None, form="primitive", seed=0, init_scale=1.0, dtype=None,
                          device=None) -> HopfieldResNet:
    """Hopfield-ResNet with ``len(channels)`` blocks (E P & Srinivasan 2025)."""
    shape, n_out = _shape_from(dataset, input_shape, n_out)
    return HopfieldResNet(shape, tuple(channels), n_out, activation=activation,
                          output_activation=output_activation, alpha=alpha, form=form,
                          seed=seed, init_scale=_seq(init_scale), dtype=_dtype(dtype),
                          device=device)


def build_hopfield_resnet13(dataset="cifar10", input_shape=None, n_out=None,
                            channels=(128, 256, 512, 512), activation="relu6",
                            output_activation="identity", alpha=None, form="primitive", seed=0,
                            init_scale=None, dtype=None, device=None) -> HopfieldResNet:
    """Hopfield-ResNet13 (:func:`ctep.energies.hopfield_resnet13`)."""
    kw = _given(input_shape=_tuple(input_shape), n_out=n_out, init_scale=_seq(init_scale))
    return hopfield_resnet13(dataset, channels=tuple(channels), activation=activation,
                             output_activation=output_activation, alpha=alpha, form=form,
                             seed=seed, dtype=_dtype(dtype), device=device, **kw)


def build_dendritic(sizes=(784, 256, 10), branches=8, sparsity=0.5, apical_scale=0.2,
                    activation="hard_sigmoid", output_activation=None,
                    branch_activation="relu", sharpness=10.0, alpha=None, form="primitive",
                    seed=0, init_scale=1.0, dtype=None, device=None) -> DendriticHopfield:
    """Dendritic neurons, energy-consistent form (docs/models.md)."""
    return DendriticHopfield(tuple(sizes), branches=branches, sparsity=sparsity,
                             apical_scale=apical_scale, activation=activation,
                             output_activation=output_activation,
                             branch_activation=branch_activation, sharpness=sharpness,
                             alpha=alpha, form=form, seed=seed, init_scale=init_scale,
                             dtype=_dtype(dtype), device=device)


def _dendritic_preset(sizes):
    def build(**kwargs) -> DendriticHopfield:
        kwargs.setdefault("sizes", sizes)
        return build_dendritic(**kwargs)

    build.__signature__ = inspect.signature(build_dendritic)  # option names for the checks
    build.__doc__ = f"Dendritic net {'-'.join(map(str, sizes))} (Kubo 2026)."
    return build


def _seq(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _tuple(value):
    return None if value is None else tuple(value)


def _given(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


MODELS: dict[str, Callable[..., Energy]] = {
    "dense": build_dense,
    "conv": build_conv,
    "vgg5": build_vgg5,
    "hopfield-resnet": build_hopfield_resnet,
    "hopfield-resnet13": build_hopfield_resnet13,
    "dendritic": build_dendritic,
    "dendritic-mnist": _dendritic_preset((784, 256, 10)),
    "dendritic-fmnist": _dendritic_preset((784, 256, 256, 10)),
}
#: the families :func:`small_instance` knows
SMALL = ("dense", "conv", "hopfield-resnet", "dendritic")
ALIASES = {"hopfieldresnet": "hopfield-resnet", "resnet": "hopfield-resnet",
           "hopfieldresnet13": "hopfield-resnet13", "resnet13": "hopfield-resnet13",
           "cnn": "conv", "mlp": "dense"}


def _key(name: str, known) -> str:
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key.replace("-", ""), key)
    if key not in known:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")
    return key


def model_options(name: str) -> tuple[str, ...]:
    """The option names a model's builder accepts."""
    return tuple(inspect.signature(MODELS[_key(name, MODELS)]).parameters)


def build_model(name: str, **kwargs) -> Energy:
    """Build a registered model from plain config values (see the module docstring)."""
    key = _key(name, MODELS)
    options = model_options(key)
    bad = sorted(set(kwargs) - set(options))
    if bad:
        hint = ""
        if key.startswith("dendritic") and "apical_branches" in bad:
            hint = (" (the energy-consistent dendritic model has no separate apical branches: "
                    "the apical input runs through the basal branches of the layer above; see "
                    "docs/models.md)")
        raise ValueError(f"model {key!r} has no option(s) {', '.join(map(repr, bad))}{hint}; "
                         f"options: {', '.join(options)}")
    return MODELS[key](**kwargs)


# --- small random instances for gradient checks ------------------------------------------------
def _spectral_norm(fn: Callable[[torch.Tensor], torch.Tensor], in_shape) -> float:
    """‖A‖₂ of a linear map A on tensors of per-sample shape ``in_shape`` (exact, dense)."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    mat = fn(eye).reshape(n, -1)
    return float(spectral_norm(mat))


def _rescale_couplings(energy: CouplingEnergy, norm: float) -> None:
    """Scale each coupling's linear part (the convolution before pooling, or W) to ‖·‖₂ = norm
    (pooling has norm ≤ 1, so the coupling's Lipschitz constant is at most ``norm``)."""
    with torch.no_grad():
        for c in energy.couplings:
            w = c.weight
            if isinstance(c, DenseCoupling):
                current = float(spectral_norm(w.double()))
            else:
                current = _spectral_norm(lambda t, c=c: c.conv(t.to(c.weight.dtype)).double(),
                                         c.in_shape)
            w.mul_(norm / current)


def small_instance(name: str, seed: int = 0, dtype: torch.dtype | str = torch.float64,
                   **overrides) -> tuple[Energy, tuple[int, ...]]:
    """A tiny random instance of ``dense``, ``conv``, ``hopfield-resnet`` or ``dendritic`` and
    its per-sample input shape, all from ``seed`` (no global RNG).

    ``overrides`` replace the builder options used (e.g. ``activation="tanh"``). Instances:

    * dense: 5-7-6-3, tanh; each W at spectral norm 0.5, biases U(−0.3, 0.3).
    * conv: input 2×6×6, channels 3-4 (3×3, padding 1, 2×2 max pool), dense head to 3,
      hard sigmoid; each coupling at norm 0.3, biases U(0.3, 0.7) (units inside the box).
    * hopfield-resnet: input 2×8×8, 2 blocks of 2-3 channels, relu6, linear output of 3; each
      coupling at norm 0.2 (a b-layer touches four couplings), biases U(1, 5).
    * dendritic: 5-6-5-3, 3 branches, sparsity 0.5, α = 0.5, hard sigmoid somas, ReLU branches;
      each branch matrix at norm 0.5, branch biases U(0.1, 0.4) (most branches active).

    With these norms the somatic input's Lipschitz constant is below one wherever the active
    set (max-pool arg-maxes, branch gates, clip regions) does not switch, so the map
    s ← σ(u(s)) contracts there.
    """
    key = _key(name, SMALL)
    dtype = _dtype(dtype)
    gen = torch.Generator().manual_seed(int(seed) + 1)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo)

    if key == "dense":
        opts = dict(sizes=(5, 7, 6, 3), activation="tanh", seed=seed, dtype=dtype)
        opts.update(overrides)
        energy = build_model("dense", **opts)
        with torch.no_grad():
            for w in energy.weights:
                w.mul_(0.5 / float(spectral_norm(w.double())))
            for b in energy.biases:
                uniform(b, -0.3, 0.3)
        return energy, (energy.sizes[0],)
    if key == "conv":
        opts = dict(input_shape=(2, 6, 6), channels=(3, 4), n_out=3, kernel=3, padding=1,
                    pool="max", activation="hard_sigmoid", seed=seed, dtype=dtype)
        opts.update(overrides)
        energy = build_model("conv", **opts)
        _rescale_couplings(energy, 0.3)
        with torch.no_grad():
            for b in energy.biases:
                uniform(b, 0.3, 0.7)
        return energy, energy.input_shape
    if key == "hopfield-resnet":
        opts = dict(input_shape=(2, 8, 8), channels=(2, 3), n_out=3, activation="relu6",
                    seed=seed, dtype=dtype)
        opts.update(overrides)
        energy = build_model("hopfield-resnet", **opts)
        _rescale_couplings(energy, 0.2)
        with torch.no_grad():
            for b in energy.biases:
                uniform(b, 1.0, 5.0)
        return energy, energy.input_shape
    opts = dict(sizes=(5, 6, 5, 3), branches=3, sparsity=0.5, apical_scale=0.5,
                activation="hard_sigmoid", seed=seed, dtype=dtype)
    opts.update(overrides)
    energy = build_model("dendritic", **opts)
    with torch.no_grad():
        for w, c in zip(energy.weights, energy.branch_biases, strict=True):
            for k in range(w.shape[0]):
                norm = float(spectral_norm(w[k].double()))
                if norm > 0:
                    w[k].mul_(0.5 / norm)
            uniform(c, 0.1, 0.4)
    return energy, (energy.sizes[0],)


# --- active sets (where EP is exact) --------------------------------------------------------------
def active_set(energy: Energy, x: torch.Tensor, states) -> torch.Tensor:
    """Per-sample codes of the energy's active set, shape ``(B, m)``: max-pool arg-maxes, ReLU
    branch gates, clip regions of clipped units. EP equals the gradient (as β → 0) when these
    codes are the same at the free and the nudged equilibria. The codes read the un-nudged
    pre-activation ∂Φ/∂s: in the primitive form the output's σ also sees −β∂ℓ/∂s, so at finite
    β also require :func:`active_set_margin` > β·max|∂ℓ/∂s|."""
    if hasattr(energy, "active_set"):
        return energy.active_set(x, tuple(states))
    return _clip_codes(energy, x, energy._activities(tuple(states)))


def active_set_margin(energy: Energy, x: torch.Tensor, states) -> torch.Tensor:
    """Per-sample distance (in pre-activation units) to the nearest switch of the active set;
    ``inf`` when nothing can switch (smooth activations, no max pooling), shape ``(B,)``."""
    if hasattr(energy, "active_set_margin"):
        return energy.active_set_margin(x, tuple(states))
    return _margin(energy, x, tuple(states), ())
