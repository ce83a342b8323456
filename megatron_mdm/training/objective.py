"""The loss of a run, chosen once when the run is built (docs/design.md §3, §4, §14).

`loss_for(cfg, kind)` returns a `RunLoss`: `loss(output, micro_batch) -> scalar` for the batch
source's kind (SFT batches take the SFT loss (mdm and arm), pretraining batches the ARM, MDLM or
SMDM loss; block diffusion: the same MDLM or SMDM loss on x_t's positions, with p per token, §11),
and `model_kwargs(micro_batch)`, what the model is given besides the batch's own inputs.

With `model.logits=masked` (mdm and block) or `model.ce_chunk_tokens > 0`, the model gets
`labels` and a `loss_mask` and returns the per-token cross-entropy [b, L], computed at the loss
positions only (§14); otherwise it returns vocab-parallel logits [b, L, V/tp] and the CE is taken
here (correct under TP without gathering the vocabulary). The loss accepts either output, told
apart by their rank. It runs on the last pipeline stage; nothing in the training step inspects
batch types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.data.batches import BatchKind
from megatron_mdm.diffusion.loss import (
    mdlm_loss_from_ce,
    smdm_loss_from_ce,
    token_cross_entropy,
)
from megatron_mdm.diffusion.sft_loss import sft_loss

LossFn = Callable[[torch.Tensor, object], torch.Tensor]


def _token_ce(output: torch.Tensor, mb) -> torch.Tensor:
    """Per-token CE [b, L]: the model's own (given labels) or from its logits [b, L, V/tp]."""
    if output.dim() == mb.targets.dim():
        return output
    return token_cross_entropy(output, mb.targets)


@dataclass(frozen=True)
class RunLoss:
    """The run's loss; `rows`: the model computes the CE at the loss positions only (`masked`,
    or every position when only chunking is on: `all`); None: it returns logits."""

    kind: BatchKind
    objective: str
    diffusion_loss: str
    eps: float
    sft_normalize: str
    rows: str | None

    def model_kwargs(self, mb) -> dict:
        if self.rows is None:
            return {}
        loss_mask = mb.masked if self.rows == "masked" else None
        return {"labels": mb.targets, "loss_mask": loss_mask}

    def __call__(self, output: torch.Tensor, mb) -> torch.Tensor:
        ce = _token_ce(output, mb)
        if self.kind == "sft":
            return sft_loss(ce, mb.masked, mb.p_mask, mb.response_lengths, self.sft_normalize)
        if self.objective == "arm":
            return ce.mean()  # arm_loss: next-token CE, mean over tokens
        if self.diffusion_loss == "mdlm":
            return mdlm_loss_from_ce(ce, mb.masked, mb.p_mask, self.eps)
        return smdm_loss_from_ce(ce, mb.masked, mb.p_mask)


def loss_rows(cfg: ExperimentConfig) -> str | None:
    """Which rows the model computes the CE of (None: it returns logits); see `RunLoss`."""
    if cfg.model.logits == "masked" and cfg.model.objective != "arm":
        return "masked"
    return "all" if cfg.model.ce_chunk_tokens > 0 else None


def loss_for(cfg: ExperimentConfig, kind: BatchKind) -> RunLoss:
    return RunLoss(
        kind=kind,
        objective=cfg.model.objective,
        diffusion_loss=cfg.diffusion.loss,
        eps=cfg.diffusion.eps,
        sft_normalize=cfg.sft.normalize,
        rows=loss_rows(cfg),
    )
