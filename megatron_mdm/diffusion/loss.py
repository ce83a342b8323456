"""Training losses (docs/design.md §3): SMDM/LLaDA diffusion loss, MDLM form, ARM next-token loss.

All take vocab-parallel logits [B, L, V/tp] and use megatron-core's vocab-parallel cross-entropy,
so they are correct under tensor parallelism without gathering the vocabulary.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token CE [B, L] in fp32 from (possibly vocab-sharded) logits.

    Consumes `logits`: megatron's kernel exponentiates fp32 input in place to save a [B, L, V]
    buffer, so callers must not read the logits afterwards.
    """
    return vocab_parallel_cross_entropy(logits.float(), targets)


def per_token(p: torch.Tensor) -> torch.Tensor:
    """A masking probability per sequence [B] as [B, 1]; per token [B, L] (blocks) as it is."""
    return p[:, None] if p.dim() == 1 else p


def smdm_loss(logits, x0, masked, p_mask) -> torch.Tensor:
    """sum_{b,i} m_bi * CE_bi / p_bi  /  (B * L); p per sequence or per token (blocks, §11)."""
    return smdm_loss_from_ce(token_cross_entropy(logits, x0), masked, p_mask)


def smdm_loss_from_ce(ce, masked, p_mask) -> torch.Tensor:
    """`smdm_loss` of the per-token CE [B, L] (model.logits=masked: the model's output)."""
    weighted = ce * masked.to(ce.dtype) / per_token(p_mask).to(ce.dtype)
    return weighted.sum() / ce.numel()


def mdlm_loss(logits, x0, masked, p_mask, eps: float) -> torch.Tensor:
    """MDLM: log-linear schedule, weight sigma'(t)/expm1(sigma(t)) per masked token, mean over tokens.

    With sigma(t) = -log(1 - (1 - eps) t) the masking probability is 1 - exp(-sigma(t)) =
    (1 - eps) t, and the weight simplifies to (1 - eps) / ((1 - eps) t) = 1 / t. The masks were
    drawn at rate p (docs/design.md §3.1), so the schedule's time is the t with (1 - eps) t = p:
    t = p / (1 - eps), in (eps / (1 - eps), 1 / (1 - eps)), never 0. (Recovering the uniform draw
    instead, t = (p - eps) / (1 - eps), pairs the weight 1/t with the wrong rate: a biased, unbounded
    weight near t = 0.) SUBS: the `[MASK]` logit is already -inf (model output), unmasked positions
    carry no loss.
    """
    return mdlm_loss_from_ce(token_cross_entropy(logits, x0), masked, p_mask, eps)


def mdlm_loss_from_ce(ce, masked, p_mask, eps: float) -> torch.Tensor:
    """`mdlm_loss` of the per-token CE [B, L] (model.logits=masked: the model's output)."""
    t = p_mask / (1.0 - eps)
    weighted = ce * masked.to(ce.dtype) / per_token(t).to(ce.dtype)
    return weighted.sum() / ce.numel()


def arm_loss(logits, targets) -> torch.Tensor:
    """Next-token CE, mean over tokens; `targets` are the inputs shifted left by one."""
    return token_cross_entropy(logits, targets).mean()
