"""Nudge costs ℓ(s_out, y): one value per sample, with a closed-form gradient in the output state.

The total energy is ``F = E + β·ℓ``. A cost may own parameters (the softmax read-out of
Laborieux et al. 2021): EP then also differentiates ``β·ℓ`` in θ, and those parameters get
their gradient from the nudge term alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn


def _targets_as_float(y: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Targets as the float tensor of ``shape = (B, n, ...)`` that ℓ compares scores with: class
    indices ``(B,)`` become one-hot ``(B, n)`` (their range is read on the host); float targets
    are checked against ``shape`` and cast (no copy when already of ``dtype``)."""
    width = shape[1]
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if y.dim() != 1:
            raise ValueError(f"class-index targets must have shape (B,), got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= width):
            raise ValueError(f"class indices must lie in [0, {width}), got [{int(y.min())}, "
                             f"{int(y.max())}]")
        return nnf.one_hot(y.long(), width).to(dtype)
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"float targets must match the output state's shape {tuple(shape)},"
                         f" got {tuple(y.shape)}")
    return y.to(dtype)


class Cost(nn.Module):
    """A nudge cost ℓ(s_out, y) per sample (base class)."""

    def forward(self, output: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """ℓ per sample, shape ``(B,)``."""
        raise NotImplementedError

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """∂ℓ/∂s_out per sample (closed form), shape of ``output``."""
        raise NotImplementedError

    def logits(self, output: Tensor) -> Tensor:
        """The scores whose arg-max is the predicted class."""
        return output

    def predict(self, output: Tensor) -> Tensor:
        """Predicted class per sample."""
        return self.logits(output).argmax(dim=1)

    def prepare_targets(self, y: Tensor, output_shape: tuple[int, ...],
                        dtype: torch.dtype) -> Tensor:
        """``y`` in the form :meth:`forward` and :meth:`grad_output` read fastest, for output
        states of per-sample shape ``output_shape`` in ``dtype``; they accept it as ``y``.
        :class:`~ctep.dynamics.BoundField` computes it once per bound batch. Here ``y`` itself;
        the class-index costs turn indices into their one-hot matrix (checked once)."""
        return y

    def check_targets(self, y: Tensor, batch: int) -> None:
        """Raise a clear error on targets that do not fit a batch of ``batch`` samples."""
        if y.shape[0] != batch:
            raise ValueError(f"targets have batch size {y.shape[0]}, inputs have {batch}")
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise ValueError("targets contain NaN or infinite values")


class SquaredError(Cost):
    """ℓ = ½‖s_out − y‖² with y one-hot for class indices (Scellier & Bengio 2017).

    ∂ℓ/∂s_out = s_out − y.
    """

    def prepare_targets(self, y: Tensor, output_shape: tuple[int, ...],
                        dtype: torch.dtype) -> Tensor:
        """The float targets (one-hot for class indices) in ``dtype``."""
        return _targets_as_float(y, (y.shape[0], *output_shape), dtype)

    def forward(self, output: Tensor, y: Tensor) -> Tensor:
        d = output - _targets_as_float(y, tuple(output.shape), output.dtype)
        return 0.5 * d.reshape(d.shape[0], -1).pow(2).sum(dim=1)

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:
        return output - _targets_as_float(y, tuple(output.shape), output.dtype)


class CrossEntropy(Cost):
    """Softmax cross-entropy of logits read out from the output state.

    With ``readout=(n_out, n_classes)`` the logits are ``z = W s_out + b`` with trainable W, b
    (the last layer is not a state, as in Laborieux et al. 2021); with ``readout=None`` the output
    state itself is the logits. ℓ = −log softmax(z)_y and ∂ℓ/∂s_out = Wᵀ(softmax(z) − onehot(y)).
    """

    def __init__(self, readout: tuple[int, int] | None = None, *, seed: int = 0,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.readout: nn.Linear | None = None
        if readout is not None:
            n_in, n_classes = readout
            self.readout = nn.Linear(n_in, n_classes, dtype=dtype)
            gen = torch.Generator().manual_seed(seed)
            bound = 1.0 / n_in**0.5
            with torch.no_grad():  # seeded U(-1/√n, 1/√n), like nn.Linear but reproducible
                self.readout.weight.copy_(
                    (torch.rand(n_classes, n_in, generator=gen, dtype=torch.float64) * 2 - 1)
                    * bound)
                self.readout.bias.zero_()

    def logits(self, output: Tensor) -> Tensor:
        flat = output.reshape(output.shape[0], -1)
        return flat if self.readout is None else self.readout(flat)

    def prepare_targets(self, y: Tensor, output_shape: tuple[int, ...],
                        dtype: torch.dtype) -> Tensor:
        """The float targets over the classes (one-hot for class indices) in ``dtype``."""
        classes = math.prod(output_shape) if self.readout is None else self.readout.out_features
        return _targets_as_float(y, (y.shape[0], classes), dtype)

    def forward(self, output: Tensor, y: Tensor) -> Tensor:
        z = self.logits(output)
        target = _targets_as_float(y, tuple(z.shape), z.dtype)
        return -(target * torch.log_softmax(z, dim=1)).sum(dim=1)

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:
        z = self.logits(output)
        dz = torch.softmax(z, dim=1) - _targets_as_float(y, tuple(z.shape), z.dtype)
        if self.readout is not None:
            dz = dz @ self.readout.weight
        return dz.reshape(output.shape)


def get_cost(name: str | Cost, **kwargs) -> Cost:
    """``"squared_error"`` (alias ``"mse"``) or ``"cross_entropy"`` (alias ``"ce"``)."""
    if isinstance(name, Cost):
        return name
    key = str(name).lower().replace("-", "_")
    if key in ("squared_error", "mse"):
        return SquaredError()
    if key in ("cross_entropy", "ce"):
        return CrossEntropy(**kwargs)
    raise ValueError(f"unknown cost {name!r}; known: squared_error (mse), cross_entropy (ce)")
