"""Output layer + cross-entropy in chunks of rows: per-row CE without all the logits at once.

    loss_i = logsumexp_v(z_iv) - z_i,t_i      with  z = (h @ W.T) (in h's dtype) + bias, in fp32

for rows h [n, H], a (vocab-sharded) output weight W [V_local, H], an optional additive bias
[V_local] (the model's -inf for ids it never predicts) and global target ids t [n]. The technique
of Liger's fused linear cross-entropy and Cut Cross-Entropy, written for this project:

- forward: per chunk of `chunk_rows` rows, the chunk's logits [c, V_local] are computed, reduced to
  the row's log-sum-exp and target logit, and freed; only the log-sum-exp [n] is kept;
- backward: per chunk, the logits are recomputed, turned into the CE gradient
  `g = (softmax(z) - onehot(t)) * dloss` [c, V_local] and consumed at once by the two GEMMs
  `dh = g @ W` and `dW += g.T @ h` (dW accumulated in fp32).

So at most one chunk's logits (and their gradient) exist at a time: the loss path holds
O(chunk_rows * V_local) instead of O(n * V_local), for one extra output GEMM (the recomputation).

Vocab-parallel (megatron's layout: rank r holds ids [r * V_local, (r + 1) * V_local)): per chunk the
row maxima are max-reduced and the sums of exponentials and target logits sum-reduced over `group`,
exactly as megatron-core's vocab-parallel cross-entropy does for the whole tensor. Backward needs no
communication (the log-sum-exp is saved). The gradient w.r.t. `hidden` is this rank's partial sum:
as in megatron's ColumnParallelLinear, the caller puts `copy_to_tensor_model_parallel_region`
(all-reduce in backward) in front of it.

Precision follows the unfused path (the output layer in the parameter dtype, the CE in fp32): the
logits are rounded to the hidden's dtype before the bias is added in that dtype and they are
upcast; the CE gradient is rounded back to the parameter dtype for the two GEMMs.

Oracle: `kernels/chunked_ce_reference.py` (plain torch under autograd, whole vocabulary at once).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """fp32 logits [c, V_local] of one chunk: one fresh buffer (plus a half-size one for bf16)."""
    z = h @ weight.t()
    if bias is not None:
        z.add_(bias.to(z.dtype))
    return z.float()


def _local_target(targets: torch.Tensor, vocab_start: int, local_size: int):
    """Target ids as local column indices (0 where another rank holds the id) and the ownership."""
    local = targets - vocab_start
    mine = (local >= 0) & (local < local_size)
    return torch.where(mine, local, torch.zeros_like(local)), mine


def _lse_and_target(z: torch.Tensor, targets: torch.Tensor, vocab_start: int, group):
    """Row log-sum-exp and target logit [c] of vocab-sharded logits z [c, V_local]; overwrites
    z (with exp(z - row max)) so that a chunk needs one logits buffer."""
    local, mine = _local_target(targets, vocab_start, z.shape[1])
    target_logit = torch.where(mine, z.gather(1, local[:, None])[:, 0], z.new_zeros(()))
    row_max = z.max(dim=1).values
    if group is not None:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    # A row whose every local logit is -inf has max -inf; exp(-inf - (-inf)) would be NaN.
    safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    sums = torch.stack([z.sub_(safe_max[:, None]).exp_().sum(dim=1), target_logit])
    if group is not None:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return torch.log(sums[0]) + safe_max, sums[1]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, vocab_start, group):
        n = hidden.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            z = _chunk_logits(hidden[rows], weight, bias)
            lse[rows], target_logit = _lse_and_target(z, targets[rows], vocab_start, group)
            loss[rows] = lse[rows] - target_logit
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_rows, ctx.vocab_start = chunk_rows, vocab_start
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_loss = grad_loss.float()
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            h = hidden[rows]
            g = _chunk_logits(h, weight, bias).sub_(lse[rows, None]).exp_()  # softmax, in place
            local, mine = _local_target(targets[rows], ctx.vocab_start, weight.shape[0])
            g.scatter_add_(1, local[:, None], -mine.to(g.dtype)[:, None])
            g = g.mul_(grad_loss[rows, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
            del g
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int,
    bias: torch.Tensor | None = None,
    vocab_start: int = 0,
    group=None,
) -> torch.Tensor:
    """Per-row CE [n] (fp32) of `hidden` [n, H] against global ids `targets` [n] under the output
    weight `weight` [V_local, H] (rows `vocab_start ..` of the vocabulary), `chunk_rows` rows at a
    time. `group`: the tensor-parallel group the vocabulary is split over (None: not split).
    `bias` [V_local] is a constant (no gradient). Zero rows give an empty loss."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)}: want [n, H] and [n]"
        )
    if group is not None and dist.get_world_size(group) == 1:
        group = None
    bias = None if bias is None else bias.detach()
    return _ChunkedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, chunk_rows, vocab_start, group
    )
