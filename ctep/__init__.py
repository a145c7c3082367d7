"""ctep: continuous-time Equilibrium Propagation on PyTorch.

A network is an energy E(x, s; θ) over layer states; its dynamics, with one time constant per
neuron, descend F = E + β·ℓ(s_L, y): τ ⊙ ds/dt = −∂F/∂s for the classical form, and
τ ⊙ ds/dt = σ(∂Φ/∂s − β∂ℓ/∂s) − s (same fixed points) for the bounded primitive form. States
are relaxed to equilibrium, EP estimators turn equilibria into parameter gradients, and
reference gradients (implicit differentiation) verify them.
"""

from .activations import Activation, get_activation
from .dynamics import BoundField, VectorField
from .energies import (
    ConvHopfield,
    DendriticHopfield,
    DenseHopfield,
    Energy,
    HopfieldResNet,
    LayeredEnergy,
)
from .estimators import (
    CenteredEP,
    Estimate,
    Estimator,
    FiniteNudgeEP,
    HolomorphicEP,
    LangevinEP,
    OneSidedEP,
    get_estimator,
)
from .losses import CrossEntropy, SquaredError, get_cost
from .models import MODELS, build_model
from .solve import Equilibrium, RelaxationError, RelaxConfig, Status, relax
from .timeconstants import TimeConstants

__version__ = "0.1.0.dev0"

__all__ = [
    "Activation",
    "BoundField",
    "CenteredEP",
    "ConvHopfield",
    "CrossEntropy",
    "DendriticHopfield",
    "DenseHopfield",
    "Energy",
    "Equilibrium",
    "Estimate",
    "Estimator",
    "FiniteNudgeEP",
    "HolomorphicEP",
    "HopfieldResNet",
    "LangevinEP",
    "LayeredEnergy",
    "MODELS",
    "OneSidedEP",
    "RelaxConfig",
    "RelaxationError",
    "SquaredError",
    "Status",
    "TimeConstants",
    "VectorField",
    "build_model",
    "get_activation",
    "get_cost",
    "get_estimator",
    "relax",
]
