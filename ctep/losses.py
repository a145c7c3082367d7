"""Nudge costs ℓ(s_out, y): one value per sample, with a closed-form gradient in the output state.

The total energy is ``F = E + β·ℓ``. A cost may own parameters (the softmax read-out of
Laborieux et al. 2021): EP then also differentiates ``β·ℓ`` in θ, and those parameters get
their gradient from the nudge term alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from .energies._memo import memoised


def _targets_as_float(y: Tensor, width: int, like: Tensor) -> Tensor:
    """Class indices ``(B,)`` become one-hot ``(B, width)``; float targets are checked and cast."""
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if y.dim() != 1:
            raise ValueError(f"class-index targets must have shape (B,), got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= width):
            raise ValueError(f"class indices must lie in [0, {width}), got [{int(y.min())}, "
                             f"{int(y.max())}]")
        return nnf.one_hot(y.long(), width).to(like.dtype)
    if y.shape != like.shape:
        raise ValueError(f"float targets must match the output state's shape {tuple(like.shape)},"
                         f" got {tuple(y.shape)}")
    return y.to(like.dtype)


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

    def float_targets(self, y: Tensor, width: int, like: Tensor) -> Tensor:
        """The targets as a float matrix like ``like`` (one-hot of width ``width`` for class
        indices), memoised while ``y`` is the same unmodified tensor and ``like`` has the same
        shape, dtype and device: the nudged steps of a relaxation then check the class indices
        on the host and build the one-hot matrix once, not at every evaluation. Only entries for
        the current ``y`` are kept (a new target tensor, e.g. the sub-batch ``y[idx]`` left after
        samples finish, drops the others), so the memo holds one batch's targets, not one per
        batch size seen. A change of ``y`` through ``y.data`` (which does not bump the version
        counter) is not seen."""
        memo = self.__dict__.setdefault("_target_memo", {})
        key = (width, tuple(like.shape), like.dtype, like.device)
        if key not in memo:  # one entry: memoised replaces it when y changes
            memo.clear()
        return memoised(memo, key, (y,), lambda: _targets_as_float(y, width, like))

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

    def forward(self, output: Tensor, y: Tensor) -> Tensor:
        d = output - self.float_targets(y, output.shape[1], output)
        return 0.5 * d.reshape(d.shape[0], -1).pow(2).sum(dim=1)

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:
        return output - self.float_targets(y, output.shape[1], output)


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

    def forward(self, output: Tensor, y: Tensor) -> Tensor:
        z = self.logits(output)
        target = self.float_targets(y, z.shape[1], z)
        return -(target * torch.log_softmax(z, dim=1)).sum(dim=1)

    def grad_output(self, output: Tensor, y: Tensor) -> Tensor:
        z = self.logits(output)
        dz = torch.softmax(z, dim=1) - self.float_targets(y, z.shape[1], z)
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
