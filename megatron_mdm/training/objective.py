"""The loss of a run, chosen once when the run is built (docs/design.md §3, §4).

`loss_for(cfg, kind)` returns `loss(logits, micro_batch) -> scalar` for the batch source's kind:
SFT batches take the SFT loss (mdm and arm), pretraining batches the ARM, MDLM or SMDM loss
(block diffusion: the same MDLM or SMDM loss on x_t's logits, with p per token, §11).
It runs on the last pipeline stage on vocab-parallel logits (correct under TP without gathering
the vocabulary); nothing in the training step inspects batch types.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.data.batches import BatchKind
from megatron_mdm.diffusion.loss import arm_loss, mdlm_loss, smdm_loss, token_cross_entropy
from megatron_mdm.diffusion.sft_loss import sft_loss

LossFn = Callable[[torch.Tensor, object], torch.Tensor]


def _sft(normalize: str, logits: torch.Tensor, mb) -> torch.Tensor:
    ce = token_cross_entropy(logits, mb.targets)
    return sft_loss(ce, mb.masked, mb.p_mask, mb.response_lengths, normalize)


def _arm(logits: torch.Tensor, mb) -> torch.Tensor:
    return arm_loss(logits, mb.targets)


def _mdlm(eps: float, logits: torch.Tensor, mb) -> torch.Tensor:
    return mdlm_loss(logits, mb.targets, mb.masked, mb.p_mask, eps)


def _smdm(logits: torch.Tensor, mb) -> torch.Tensor:
    return smdm_loss(logits, mb.targets, mb.masked, mb.p_mask)


def loss_for(cfg: ExperimentConfig, kind: BatchKind) -> LossFn:
    if kind == "sft":
        return partial(_sft, cfg.sft.normalize)
    if cfg.model.objective == "arm":
        return _arm
    if cfg.diffusion.loss == "mdlm":
        return partial(_mdlm, cfg.diffusion.eps)
    return _smdm
