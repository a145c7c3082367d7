"""Reference gradients to verify EP estimators against, and comparison metrics."""

from .implicit import implicit_gradient
from .metrics import compare

__all__ = ["compare", "implicit_gradient"]
