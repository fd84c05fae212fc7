"""Exact CPU maths from the first step of a fresh process (PyTorch's MKL builds).

PyTorch sends float ``sin``, ``cos``, ``exp``, ``sqrt`` and other unary ops on contiguous CPU tensors
to oneMKL's VML, which picks each function's kernel the first time it is called. When that first
call runs on several intra-op threads at once, one thread can run a low-accuracy kernel over its
whole chunk (pytorch/pytorch#188792; oneMKL 2024.2, which the 2.x wheels bundle). Here that made a
restarted worker's first step differ from the uninterrupted run's in the last bits in about one
fresh process in five, so resumed runs stopped matching bit for bit. Calling each function once on
a single element, which runs on one thread, settles the choice before any parallel call.
"""

from __future__ import annotations

import functools

import torch

VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
           "sqrt", "tan", "tanh", "trunc")
"""The unary ops ATen hands to MKL VML (``aten/src/ATen/cpu/vml.h``)."""


@functools.cache
def settle_vml_dispatch() -> None:
    """Make oneMKL choose every VML kernel on one thread, once per process (a no-op cost after)."""
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(one)
