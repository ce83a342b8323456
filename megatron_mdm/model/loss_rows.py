"""The output layer on the loss positions only (`model.logits=masked`, docs/design.md §14.1).

An MDM's loss reads the logits of its masked positions only (SFT: masked response positions),
on average half of them. Given `labels` and a `loss_mask` (both [b, L]), the model gathers the
hidden states of the loss positions into rows [n, H] before the output layer, so the output GEMM
and the cross-entropy run on n rows instead of b * L, and returns the per-token cross-entropy
[b, L] in fp32: CE at the loss positions, exactly 0 elsewhere (megatron's GPTModel also returns
per-token losses when given labels). `model.ce_chunk_tokens > 0` computes those rows' output layer
and CE in chunks (kernels/chunked_ce.py) without all their logits at once.

Parallel layouts:
- tensor parallel: the output weight is split over the vocabulary (megatron's
  ColumnParallelLinear); the CE is megatron's vocab-parallel cross-entropy, or the chunked
  kernel's own max / sum-exp / target-logit reductions over the TP group;
- sequence parallel: the hidden states are split along the sequence; they are all-gathered first
  (`tensor_parallel_output_grad=False`: backward keeps this rank's slice of a gradient that the
  output layer's input copy has already summed over the group), then rows are selected;
- pipeline parallel: only the last stage runs this; every stage receives the same kwargs.
- ZeRO-3: the chunked kernel runs inside the output layer's own forward (a subclass of
  megatron's ColumnParallelLinear), so DeepSpeed gathers its weight for forward and backward.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    vocab_parallel_cross_entropy,
)

from megatron_mdm.kernels.chunked_ce import chunked_linear_cross_entropy


class RowLossOutputLayer(ColumnParallelLinear):
    """megatron-core's output layer, which can also return the CE of rows [n, H] (`targets`)."""

    def forward(  # type: ignore[override]
        self,
        input_: torch.Tensor,
        weight: torch.Tensor | None = None,
        runtime_gather_output: bool | None = None,
        targets: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        chunk_rows: int = 0,
    ):
        if targets is None:
            return super().forward(input_, weight, runtime_gather_output)
        if chunk_rows > 0:
            group = parallel_state.get_tensor_model_parallel_group()
            first = parallel_state.get_tensor_model_parallel_rank() * self.weight.shape[0]
            rows = copy_to_tensor_model_parallel_region(input_, group=group)
            return chunked_linear_cross_entropy(
                rows, self.weight, targets, chunk_rows, logit_bias, first, group
            )
        sequence_parallel, self.sequence_parallel = self.sequence_parallel, False
        try:  # rows are already whole: the plain column-parallel GEMM (input grad all-reduced)
            logits, _ = super().forward(input_[:, None, :], weight, runtime_gather_output=False)
        finally:
            self.sequence_parallel = sequence_parallel
        logits = logits[:, 0]
        if logit_bias is not None:
            logits = logits + logit_bias.to(logits.dtype)
        return vocab_parallel_cross_entropy(logits.float(), targets)


def row_losses(
    model,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None,
    noisy_length: int | None,
) -> torch.Tensor:
    """Per-token CE [b, L] (fp32, 0 off `loss_mask`) from the decoder's output [s, b, H]."""
    if model.config.sequence_parallel:
        group = parallel_state.get_tensor_model_parallel_group()
        hidden_states = gather_from_sequence_parallel_region(
            hidden_states, tensor_parallel_output_grad=False, group=group
        )
    if noisy_length is not None:
        hidden_states = hidden_states[:noisy_length]  # block diffusion: the x_t half
    if getattr(model, "shift", False):  # diffusion.shift: position i reads output i - 1 (§13.4)
        hidden_states = torch.cat([hidden_states[:1], hidden_states[:-1]], dim=0)
    labels_sb = labels.t()
    if hidden_states.shape[:2] != labels_sb.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match hidden states "
            f"{tuple(hidden_states.shape[:2])} (as [s, b])"
        )
    select = torch.ones_like(labels_sb, dtype=torch.bool) if loss_mask is None else loss_mask.t()
    ce = model.output_layer(
        hidden_states[select],
        targets=labels_sb[select],
        logit_bias=model.logit_bias,
        chunk_rows=model.ce_chunk_tokens,
    )
    zeros = torch.zeros(labels_sb.shape, dtype=torch.float32, device=ce.device)
    return zeros.masked_scatter(select, ce).t()
