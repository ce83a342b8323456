"""Pure-torch oracle for `kernels/fp8_linear.py`: the same FP8 math, no `torch._scaled_mm`.

Each quantisation is written as quantise-dequantise in fp32 (`round_to_fp8(v * s) / s` with
`s = fp8_max / max|v|`), and the GEMMs are ordinary fp32 matmuls under autograd:

    y = cast(grad_qdq( qdq(x) @ qdq(w).T ))

where `qdq` is the identity for gradients (straight-through: dgrad and wgrad multiply by the
quantised operands saved in forward, as the kernel does) and `grad_qdq` is the identity forward
and quantise-dequantises the incoming output gradient in backward. Autograd then produces exactly
the kernel's three products: qdq(x) @ qdq(w).T, qdq(dy) @ qdq(w) and qdq(dy).T @ qdq(x).

Deliberately written without sharing code with the kernel (scales, padding, layouts), so that a
test comparing the two checks the kernel rather than the kernel against itself.
"""

from __future__ import annotations

import torch

_FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def quantize_dequantize(v: torch.Tensor, fmt: str) -> torch.Tensor:
    """v rounded onto the FP8 grid of `fmt` after per-tensor scaling, back in fp32."""
    dtype = _FORMATS[fmt]
    top = float(torch.finfo(dtype).max)
    v = v.detach().float()
    amax = float(v.abs().max()) if v.numel() else 0.0
    if amax == 0.0:
        return v.clone()
    scale = torch.tensor(top, dtype=torch.float32) / torch.tensor(amax, dtype=torch.float32)
    on_grid = (v * scale).clamp(-top, top).to(dtype).float()
    return on_grid * scale.reciprocal()


class _QDQ(torch.autograd.Function):
    """Forward: quantise-dequantise. Backward: straight-through."""

    @staticmethod
    def forward(ctx, v, fmt):
        return quantize_dequantize(v, fmt)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GradQDQ(torch.autograd.Function):
    """Forward: identity. Backward: quantise-dequantise the gradient."""

    @staticmethod
    def forward(ctx, v, fmt):
        ctx.fmt = fmt
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad):
        return quantize_dequantize(grad, ctx.fmt), None


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, grad_format: str = "e5m2"):
    """`x @ weight.T` with FP8 rounding of x, weight (E4M3) and dy (`grad_format`), fp32 GEMMs;
    y and dx come back in x's dtype, dw in the weight's dtype."""
    x_q = _QDQ.apply(x, "e4m3")
    w_q = _QDQ.apply(weight, "e4m3")
    y = x_q @ w_q.t()  # fp32; autograd casts dx and dw back to the inputs' dtypes
    return _GradQDQ.apply(y, grad_format).to(x.dtype)
