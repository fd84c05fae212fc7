"""Dropout with a mask that is cheap to draw on a CPU, for every dropout of both models.

PyTorch's CPU dropout draws one double-precision Bernoulli sample per element, one element at a
time; on the small wave model that was a quarter of a CPU training step (profiled: ``aten::bernoulli_``
25-29 % of a step of either model). Here a CPU mask is one 31-bit integer per element compared with
``p · 2^31``: the same Bernoulli(1 - p) mask (p rounded to a multiple of 2^-31), 2.5x faster; the
softmax attentions draw theirs here too (:func:`spectral_gpt.attention.causal_softmax_attention`). Other
devices keep PyTorch's own kernel (Philox, fused), and so does code under ``torch.compile``, where
TorchInductor generates its own fused random numbers and the in-place ``random_`` would split the
model into one graph per dropout. Both draw from the global generator, so a step seeded by the
training loop draws the same mask again, and a resumed run stays exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_MASK_BITS = 31
"""``random_()`` on int32 draws uniformly from [0, 2^31 - 1]."""


def dropout_with_mask(x: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``,
    and the boolean mask of kept elements (what a hand-written backward multiplies by)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.native_dropout(x, p, True)
    keep = torch.empty(x.shape, dtype=torch.int32).random_() >= round(p * 2**_MASK_BITS)
    return (x * keep).mul_(1.0 / (1.0 - p)), keep


class Dropout(nn.Module):
    """``nn.Dropout`` (training only, inverted scaling) drawing its mask with :func:`dropout_with_mask`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        """Shows p when the model is printed, like nn.Dropout."""
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        """x in eval mode or at p = 0; else x with a fresh mask applied."""
        if not self.training or self.p == 0.0:
            return x
        return dropout_with_mask(x, self.p)[0]
