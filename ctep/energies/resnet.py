"""Hopfield-ResNet (E P & Srinivasan 2025): convolutional blocks with 1×1 skip couplings.

Block i (i = 1..N) has two feature-map states, a_i and b_i. With b_0 = x:

* a_i  ← b_{i−1}: 3×3 conv, stride 1, padding 1 (C_{i−1} → C_i channels, same size);
* b_i  ← a_i:     3×3 conv, stride 2, padding 1 (halves the size, rounding up);
* b_i  ← b_{i−1}: 1×1 conv, stride 2 (the skip connection between block outputs);

and a dense output layer reads b_N. The primitive is the sum of these bilinear couplings plus
per-channel biases (:class:`~ctep.energies.conv.CouplingEnergy`):

    Φ(x, r) = Σ_i [⟨a_i, w_i^a ⋆ b_{i−1}⟩ + ⟨b_i, w_i^b ⋆_2 a_i⟩ + ⟨b_i, w_i^s ⋆_2 b_{i−1}⟩]
              + oᵀ W flatten(b_N) + Σ_l ⟨b_l, r_l⟩,

so 3N + 1 weight tensors (13 for N = 4: Hopfield-ResNet13). With the clipped ReLU (``relu6``:
box [0, 6], or ``relu_alpha``: box [0, α]) and the primitive form, the fixed points are the KKT
points s = clip(∂Φ/∂s − β∂ℓ/∂s) of ½‖s‖² − Φ + βℓ on the box, which is the "Hopfield update"
s_k ← act(−∂E_int/∂s_k) of the paper's code; in ctep all layers relax together, so the skip
couplings between layers of the same parity raise no ordering question. The output layer is
linear (``identity``) by default, as in the paper's code.

∂Φ/∂r is in closed form: strided convolutions, transposed convolutions with ``output_padding``
restoring odd sizes (no pooling, so Φ is bilinear and E is smooth away from the clip bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..activations import Activation
from .conv import (
    ConvCoupling,
    Coupling,
    CouplingEnergy,
    DenseCoupling,
    _positive_ints,
    check_input_shape,
    dataset_shape,
    init_weight,
    layer_activations,
    per_layer,
)


class HopfieldResNet(CouplingEnergy):
    """Hopfield-ResNet with ``len(channels)`` blocks (see the module docstring).

    States, in order: a_1, b_1, a_2, b_2, ..., a_N, b_N, output. The weight tensors are, per
    block, the 3×3 conv into a_i, the 3×3 stride-2 conv a_i → b_i and the 1×1 stride-2 skip
    b_{i−1} → b_i, then the dense head: 3N + 1 in all.

    Args:
        input_shape: (C, H, W), e.g. (3, 32, 32) (CIFAR-10) or (1, 28, 28) (Fashion-MNIST).
        channels: channels of each block (N = len(channels) ≥ 1).
        n_out: output units.
        activation: hidden activation, default ``relu6``; ``output_activation`` defaults to
            ``identity``.
        alpha: clip value for ``relu_alpha``.
        form: ``"primitive"`` (default) or ``"classical"``.
        seed: seeds the weight draw.
        init_scale: gain of each weight tensor (a value, or 3N + 1 values in the order above):
            U(−a, a) with a = gain/√fan_in. The paper's gains are in :data:`RESNET13_GAINS`.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], n_out: int, *,
                 activation: str | Activation | Sequence = "relu6",
                 output_activation: str | Activation | None = "identity",
                 alpha: float | None = None, form: str = "primitive", seed: int = 0,
                 init_scale: float | Sequence[float] = 1.0, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        input_shape = check_input_shape(input_shape)
        channels = _positive_ints(channels, "channels")
        if int(n_out) < 1:
            raise ValueError(f"n_out must be positive, got {n_out}")
        n_blocks = len(channels)
        gains = per_layer(init_scale, 3 * n_blocks + 1, "init_scale")
        gen = torch.Generator().manual_seed(int(seed))
        couplings: list[Coupling] = []
        shapes = []
        prev, prev_shape = 0, input_shape  # b_0 = x
        for i, ch in enumerate(channels):
            a, b = 2 * i + 1, 2 * i + 2
            g_a, g_b, g_s = gains[3 * i: 3 * i + 3]
            c_in = prev_shape[0]
            if min(prev_shape[1:]) < 2:
                raise ValueError(f"block {i + 1} cannot halve a {prev_shape[1]}x{prev_shape[2]} "
                                 f"map: too many blocks ({n_blocks}) for input {input_shape}")
            ca = ConvCoupling(prev, a, prev_shape, ch, 3, stride=1, padding=1,
                              weight=init_weight((ch, c_in, 3, 3), c_in * 9, g_a, gen, dtype,
                                                 device))
            cb = ConvCoupling(a, b, ca.out_shape, ch, 3, stride=2, padding=1,
                              weight=init_weight((ch, ch, 3, 3), ch * 9, g_b, gen, dtype, device))
            cs = ConvCoupling(prev, b, prev_shape, ch, 1, stride=2, padding=0,
                              weight=init_weight((ch, c_in, 1, 1), c_in, g_s, gen, dtype, device))
            couplings += [ca, cb, cs]
            shapes += [ca.out_shape, cb.out_shape]
            prev, prev_shape = b, cb.out_shape
        n_in = prev_shape[0] * prev_shape[1] * prev_shape[2]
        couplings.append(DenseCoupling(prev, prev + 1, prev_shape, int(n_out),
                                       weight=init_weight((int(n_out), n_in), n_in, gains[-1],
                                                          gen, dtype, device)))
        shapes.append((int(n_out),))
        acts = layer_activations(activation, output_activation, len(shapes), alpha)
        super().__init__(input_shape, shapes, couplings, acts, form=form, dtype=dtype,
                         device=device)
        self.channels = channels
        self.n_out = int(n_out)

    def extra_repr(self) -> str:
        names = ",".join(dict.fromkeys(a.name for a in self.activations))
        return (f"input={self.input_shape}, blocks={len(self.channels)}, "
                f"channels={list(self.channels)}, n_out={self.n_out}, activation={names}, "
                f"form={self.form}")


#: the weight gains of the paper's code (``dhcnresnet.py`` defaults) in ctep's coupling order
#: (per block: 3×3 into a, 3×3 a → b, 1×1 skip; then the head). Their init is U(±gain/√fan_in),
#: as ctep's; their biases start at U(±0.5/√fan_in), ctep's at zero.
RESNET13_GAINS = (0.6, 0.6, 0.7, 0.6, 0.6, 0.7, 0.6, 0.6, 0.7, 0.6, 0.6, 0.7, 0.8)


def hopfield_resnet13(dataset: str = "cifar10", *,
                      channels: Sequence[int] = (128, 256, 512, 512),
                      **kwargs) -> HopfieldResNet:
    """Hopfield-ResNet13: 4 blocks of 128-256-512-512 channels, relu6, linear output.

    CIFAR-10 (3×32×32): a/b maps 32/16, 16/8, 8/4, 4/2. Fashion-MNIST (1×28×28): 28/14, 14/7,
    7/4, 4/2 (the paper pads Fashion-MNIST to 32×32; pass ``input_shape=(1, 32, 32)`` with padded
    images for that). Keyword arguments go to :class:`HopfieldResNet`; ``init_scale`` defaults
    to the paper's gains (:data:`RESNET13_GAINS`).

    The paper trains it with centered EP, β = 0.1 (CIFAR-10) or 0.15 (CIFAR-100, Fashion-MNIST),
    120 free and 50 nudged fixed-point iterations, SGD with Nesterov momentum 0.9, weight decay
    2.5e-4 (CIFAR-10) or 3.5e-4, batch 128, learning rate 3e-2 with cosine annealing.
    """
    shape, classes = dataset_shape(dataset)
    input_shape = kwargs.pop("input_shape", shape)
    n_out = kwargs.pop("n_out", classes)
    if len(tuple(channels)) != 4:
        raise ValueError(f"Hopfield-ResNet13 has 4 blocks, got channels {list(channels)} "
                         "(use HopfieldResNet for other depths)")
    kwargs.setdefault("init_scale", RESNET13_GAINS)
    return HopfieldResNet(input_shape, channels, n_out, **kwargs)
