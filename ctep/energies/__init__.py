"""Energies E(x, s; θ): one value per sample over layer states."""

from .base import Energy
from .dense import DenseHopfield
from .layered import FORMS, LayeredEnergy

__all__ = ["FORMS", "DenseHopfield", "Energy", "LayeredEnergy"]
