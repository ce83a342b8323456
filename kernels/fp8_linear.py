"""FP8 linear layer without Transformer Engine: `y = x @ w.T` with all three GEMMs in FP8.

Per-tensor dynamic ("current") scaling: each operand is scaled by `fp8_max / amax(operand)` just
before it is cast, so the largest magnitude lands on the format's largest finite value and no
scaling history has to be carried between steps (no delayed-scaling state in checkpoints).
Activations and weights use E4M3 (more mantissa); output gradients use E5M2 by default (more
range, the "hybrid" recipe) or E4M3.

    fprop  y  = x_q  @ w_q.T        (E4M3 x E4M3)
    dgrad  dx = dy_q @ w_q          (grad format x E4M3)
    wgrad  dw = dy_q.T @ x_q        (grad format x E4M3)

All three go through `torch._scaled_mm`, which multiplies FP8 operands, accumulates in fp32 and
applies the two dequantisation scales (`1 / scale`) before writing `out_dtype` (the input's dtype
for y and dx, the weight's for dw). The FP8 copies of x and w made in forward are what backward
uses, as in Transformer Engine: the saved activation is 1 byte per element.

`torch._scaled_mm` wants the first operand row-major and the second column-major, and every
dimension that cuBLASLt reads as a row count of an FP8 operand a multiple of 16. The feature sizes
(in, out) are checked here (config validation rejects such models earlier); the token count is
padded with zero rows, which changes neither amax nor any product.

The oracle for tests is `kernels/fp8_reference.py`: the same quantisation written as
quantise-dequantise in plain torch, followed by ordinary fp32 matmuls under autograd.
"""

from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
GRAD_FORMATS = ("e5m2", "e4m3")
ALIGNMENT = 16  # torch._scaled_mm: FP8 operand dimensions must be multiples of 16


class FP8ShapeError(ValueError):
    """A feature size that torch._scaled_mm cannot multiply in FP8."""


def check_fp8_features(in_features: int, out_features: int) -> None:
    bad = [
        f"{name}={n}"
        for name, n in (("in_features", in_features), ("out_features", out_features))
        if n % ALIGNMENT
    ]
    if bad:
        raise FP8ShapeError(
            f"fp8 linear: {', '.join(bad)} must be a multiple of {ALIGNMENT} (torch._scaled_mm)"
        )


def check_grad_format(grad_format: str) -> None:
    if grad_format not in GRAD_FORMATS:
        raise ValueError(
            f"fp8 linear: grad_format must be one of {', '.join(GRAD_FORMATS)}, got {grad_format!r}"
        )


def fp8_scale(amax: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    """fp32 scale mapping `amax` onto the format's largest finite value; 1 for an all-zero tensor
    (anything works there) and capped so that a subnormal amax cannot give an infinite scale."""
    amax = amax.float()
    fp8_max = torch.finfo(fp8_dtype).max
    scale = fp8_max / torch.clamp(amax, min=torch.finfo(torch.float32).tiny)
    scale = torch.clamp(scale, max=torch.finfo(torch.float32).max)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def quantize(
    x: torch.Tensor, fp8_dtype: torch.dtype, amax_group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * scale cast to FP8, dequantisation factor 1 / scale). Saturates at +-fp8_max: the
    rounding of `scale` may push amax a hair past it, and E4M3 has no infinity to absorb that.
    `amax_group`: x is one shard of a tensor split over this process group; the amax (hence the
    scale) is the whole tensor's, so each shard is rounded exactly as the unsplit tensor would be."""
    amax = x.detach().abs().amax().float()
    if amax_group is not None and torch.distributed.get_world_size(amax_group) > 1:
        torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=amax_group)
    scale = fp8_scale(amax, fp8_dtype)
    fp8_max = torch.finfo(fp8_dtype).max
    x_fp8 = torch.clamp(x.float() * scale, -fp8_max, fp8_max).to(fp8_dtype)
    return x_fp8, scale.reciprocal()


def _pad_rows(x2d: torch.Tensor) -> torch.Tensor:
    extra = -x2d.shape[0] % ALIGNMENT
    if extra == 0:
        return x2d
    return torch.cat([x2d, x2d.new_zeros(extra, x2d.shape[1])])


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """Same values, stored column-major (the layout torch._scaled_mm wants for its 2nd operand)."""
    return t.t().contiguous().t()


def scaled_mm(a, a_inv_scale, b, b_inv_scale, out_dtype, fast_accum=False):
    """`(a * a_inv_scale) @ (b * b_inv_scale)` for FP8 `a` (row-major) and `b` (column-major)."""
    return torch._scaled_mm(
        a, b, scale_a=a_inv_scale, scale_b=b_inv_scale, out_dtype=out_dtype,
        use_fast_accum=fast_accum,
    )  # fmt: skip


class FP8LinearFunction(torch.autograd.Function):
    """`x @ weight.T` with FP8 fprop, dgrad and wgrad (see the module docstring). `groups`:
    amax-reduction process groups (x, weight, grad_output) for operands that are TP shards."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, grad_format: str, groups):
        out_features, in_features = weight.shape
        check_fp8_features(in_features, out_features)
        if x.shape[-1] != in_features:
            raise ValueError(f"fp8 linear: input has {x.shape[-1]} features, weight {in_features}")
        lead_shape = x.shape[:-1]
        # Row-major operands whatever the caller's strides (torch._scaled_mm on CUDA insists).
        x2d = x.reshape(-1, in_features).contiguous()
        rows = x2d.shape[0]
        x_group, w_group, ctx.dy_group = groups
        x_fp8, x_inv = quantize(_pad_rows(x2d), FP8_DTYPES["e4m3"], x_group)
        w_fp8, w_inv = quantize(weight.contiguous(), FP8_DTYPES["e4m3"], w_group)
        # fast accumulation in forward only (torchao's choice); gradients accumulate exactly.
        y = scaled_mm(x_fp8, x_inv, w_fp8.t(), w_inv, x.dtype, fast_accum=x.is_cuda)
        ctx.save_for_backward(x_fp8, x_inv, w_fp8, w_inv)
        ctx.rows, ctx.lead_shape, ctx.grad_format = rows, lead_shape, grad_format
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return y[:rows].reshape(*lead_shape, out_features)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_fp8, x_inv, w_fp8, w_inv = ctx.saved_tensors
        out_features, in_features = w_fp8.shape
        dy2d = _pad_rows(grad_y.reshape(-1, out_features).contiguous())
        dy_fp8, dy_inv = quantize(dy2d, FP8_DTYPES[ctx.grad_format], ctx.dy_group)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = scaled_mm(dy_fp8, dy_inv, _column_major(w_fp8), w_inv, ctx.x_dtype)
            grad_x = grad_x[: ctx.rows].reshape(*ctx.lead_shape, in_features)
        if ctx.needs_input_grad[1]:
            grad_w = scaled_mm(
                dy_fp8.t().contiguous(), dy_inv, _column_major(x_fp8), x_inv, ctx.w_dtype
            )
        return grad_x, grad_w, None, None


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_format: str = "e5m2",
    *,
    x_amax_group=None,
    weight_amax_group=None,
    grad_amax_group=None,
) -> torch.Tensor:
    """`x @ weight.T` in FP8 (E4M3 forward, `grad_format` for output gradients); no bias.
    The `*_amax_group`s name the process group over which that operand is sharded (None: it is
    whole here), so that a TP shard gets the scale of the unsharded tensor."""
    check_grad_format(grad_format)
    groups = (x_amax_group, weight_amax_group, grad_amax_group)
    return FP8LinearFunction.apply(x, weight, grad_format, groups)
