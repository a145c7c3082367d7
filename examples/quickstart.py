"""Relax a small network with heterogeneous time constants and check EP against implicit
differentiation. Run: python examples/quickstart.py"""

import torch

from ctep import CenteredEP, DenseHopfield, RelaxConfig, TimeConstants, VectorField, relax
from ctep.estimators import OneSidedEP
from ctep.reference import compare, implicit_gradient

torch.set_default_dtype(torch.float64)
energy = DenseHopfield([10, 16, 4], "sigmoid", seed=0)
with torch.no_grad():  # a contracting net: unique, stable equilibrium
    for w in energy.weights:
        w.mul_(0.5 / torch.linalg.matrix_norm(w, 2))
tau = TimeConstants.sample(energy.state_shapes, "lognormal", mean=1.0, spread=0.8, seed=1)
field = VectorField(energy, "squared_error", tau)

gen = torch.Generator().manual_seed(2)
x = torch.rand(8, 10, generator=gen)
y = torch.randint(0, 4, (8,), generator=gen)

cfg = RelaxConfig(method="dopri5", tol=1e-10, polish=2)
free = relax(field.bind(x), config=cfg)
print("free phase:", {k: round(v, 12) for k, v in free.summary().items()})

reference = implicit_gradient(field, x, y, free.states)
for beta in (1e-1, 1e-2, 1e-3):
    for estimator in (OneSidedEP(beta, relax=cfg), CenteredEP(beta, relax=cfg)):
        est = estimator(field, x, y, free=free)
        err = compare(est.grads, reference)["rel_error"]
        print(f"{estimator.name:>9} beta={beta:g}: rel_error {err:.2e}")
