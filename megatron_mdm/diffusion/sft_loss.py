"""SFT loss of docs/design.md §4, from per-token cross-entropy.

It takes CE rather than logits so the caller can compute CE with megatron's vocab-parallel
kernel (``diffusion.loss.token_cross_entropy``) under tensor parallelism, while this module stays
plain torch and is testable without megatron.

Only masked positions carry weight, and :func:`~megatron_mdm.data.sft.build_sft_micro_batch`
masks only response positions (EOS pads included), so prompt tokens get exactly zero gradient.
"""

from __future__ import annotations

import torch

from megatron_mdm.config import SFT_NORMALIZE  # the choices of sft.normalize

__all__ = ["SFT_NORMALIZE", "sft_loss"]


def sft_loss(
    token_ce: torch.Tensor,
    masked: torch.Tensor,
    p_mask: torch.Tensor,
    response_lengths: torch.Tensor,
    normalize: str = "sequence",
) -> torch.Tensor:
    """Scalar SFT loss for one micro-batch.

    - ``"sequence"`` (LLaDA): mean over sequences of ``sum_masked(CE / p_b) / response_len_b``,
      so every example weighs the same whatever its answer length.
    - ``"token"`` (SMDM): ``sum_{b, masked}(CE / p_b) / sum_b response_len_b``, so every
      response token weighs the same and long answers dominate.

    ``response_lengths`` include the EOS pads: they are response tokens the model must learn.
    """
    if normalize not in SFT_NORMALIZE:
        raise ValueError(f"normalize {normalize!r}: choose one of {SFT_NORMALIZE}")
    if token_ce.shape != masked.shape:
        raise ValueError(f"token_ce {tuple(token_ce.shape)} != masked {tuple(masked.shape)}")
    ce = token_ce.float()
    # where, not multiply: a non-finite CE at an unmasked position must not leak into the loss.
    weighted = torch.where(masked, ce / p_mask[:, None].to(ce.dtype), torch.zeros_like(ce))
    lengths = response_lengths.to(ce.dtype)
    if normalize == "sequence":
        return (weighted.sum(dim=1) / lengths).mean()
    return weighted.sum() / lengths.sum()
