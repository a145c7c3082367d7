"""Energies E(x, s; θ): one value per sample over layer states."""

from .base import Energy
from .conv import ConvCoupling, ConvHopfield, Coupling, CouplingEnergy, DenseCoupling, vgg5
from .dendritic import DendriticHopfield, DendriticRule
from .dense import DenseHopfield
from .layered import FORMS, LayeredEnergy
from .resnet import HopfieldResNet, hopfield_resnet13

__all__ = ["FORMS", "ConvCoupling", "ConvHopfield", "Coupling", "CouplingEnergy",
           "DendriticHopfield", "DendriticRule", "DenseCoupling", "DenseHopfield", "Energy",
           "HopfieldResNet", "LayeredEnergy", "hopfield_resnet13", "vgg5"]
