"""megatron-core's column / row parallel linear layers with the local GEMM in FP8.

Only `_forward_impl` (the local `input @ weight.T`) is replaced, by `fp8_linear`; parameters,
init, sharding, checkpoint names and the tensor-parallel collectives around the GEMM are
megatron-core's own. megatron-core folds two collectives into its GEMM autograd function; they
are applied here as megatron-core's separate region functions, which compute the same thing:
- column parallel, TP > 1: the input-gradient all-reduce (`copy_to_tensor_model_parallel_region`);
- sequence parallel: the input all-gather / gradient reduce-scatter
  (`gather_from_sequence_parallel_region`).
Scales are those of the unsharded tensors: the amax of every operand that is a TP shard is
max-reduced over the TP group (one scalar all-reduce), so FP8 rounding does not depend on
`parallel.tensor` and TP=2 reproduces TP=1 up to the order of the partial sums.
The layer spec (`megatron_mdm/model/spec.py`) uses these for linear_qkv, linear_proj, linear_fc1
and linear_fc2 when `train.precision=fp8` with `model.transformer_impl=local`; embeddings, the
output layer, norms and attention stay in the parameter dtype (bf16), as with Transformer Engine.
"""

from __future__ import annotations

from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

from .fp8_linear import check_fp8_features, check_grad_format, fp8_linear


def _fp8_local_gemm(
    layer,
    input,
    weight,
    bias=None,
    gradient_accumulation_fusion=False,
    allreduce_dgrad=False,
    sequence_parallel=False,
    grad_output_buffer=None,
    tp_group=None,
    **_unused,
):
    if gradient_accumulation_fusion or grad_output_buffer is not None:
        raise NotImplementedError(
            "fp8 linear: gradient_accumulation_fusion and deferred embedding wgrad are not "
            "supported by the local FP8 layers"
        )
    group = tp_group if tp_group is not None else layer.tp_group
    if sequence_parallel:
        input = gather_from_sequence_parallel_region(
            input, tensor_parallel_output_grad=True, group=group
        )
    elif allreduce_dgrad:
        input = copy_to_tensor_model_parallel_region(input, group=group)
    output = fp8_linear(input, weight, layer.fp8_grad_format, **layer.fp8_amax_groups)
    return output + bias if bias is not None else output


class FP8ColumnParallelLinear(ColumnParallelLinear):
    """ColumnParallelLinear whose `input @ weight_shard.T` runs in FP8."""

    def __init__(self, input_size, output_size, *, grad_format: str = "e5m2", **kwargs):
        check_grad_format(grad_format)
        super().__init__(input_size, output_size, **kwargs)
        check_fp8_features(self.input_size, self.output_size_per_partition)
        self.fp8_grad_format = grad_format
        # The input is whole on every TP rank (after the sequence-parallel all-gather too);
        # the weight and the output gradient are split along the output features.
        self.fp8_amax_groups = {
            "weight_amax_group": self.tp_group,
            "grad_amax_group": self.tp_group,
        }

    def _forward_impl(self, input, weight, *args, **kwargs):
        return _fp8_local_gemm(self, input, weight, *args, **kwargs)


class FP8RowParallelLinear(RowParallelLinear):
    """RowParallelLinear whose `input_shard @ weight_shard.T` runs in FP8 (the all-reduce or
    reduce-scatter of the partial outputs is megatron-core's, in the parameter dtype)."""

    def __init__(self, input_size, output_size, *, grad_format: str = "e5m2", **kwargs):
        check_grad_format(grad_format)
        super().__init__(input_size, output_size, **kwargs)
        check_fp8_features(self.input_size_per_partition, self.output_size)
        self.fp8_grad_format = grad_format
        # The input and the weight are split along the input features; the output gradient is
        # whole on every TP rank (the gradient of the all-reduce, or of the reduce-scatter's
        # all-gather under sequence parallelism).
        self.fp8_amax_groups = {"x_amax_group": self.tp_group, "weight_amax_group": self.tp_group}

    def _forward_impl(self, input, weight, *args, **kwargs):
        return _fp8_local_gemm(self, input, weight, *args, **kwargs)
