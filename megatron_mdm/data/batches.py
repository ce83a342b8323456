"""Micro-batches for pretraining: which samples a rank takes, and their diffusion masks.

The global batch of step s is samples [s * G, (s + 1) * G) of the train split. It is cut into
chunks of micro_batch_size * dp; in each chunk, data-parallel rank d takes the d-th micro-batch
(Megatron's sampler order). The same global batch is therefore seen on 1 or N ranks, and every
per-sample random draw is keyed by (seed, key, position in the global batch), where the key is the
training step, or ("valid", i) for the i-th validation batch, whose masks are then the same at
every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.diffusion.masking import block_forward_mask, crop_length, forward_mask


@dataclass
class MicroBatch:
    inputs: torch.Tensor  # [b, L'] model input (x_t for MDM and block, x[:-1] for ARM)
    targets: torch.Tensor  # [b, L'] x0 (MDM, block) or next tokens (ARM)
    masked: torch.Tensor | None  # [b, L'] bool, MDM and block only
    p_mask: torch.Tensor | None  # [b] (MDM) or [b, L'] per token (block)
    block_size: int | None = None  # block objective: the block size of this step (schedule)
    lookahead: int | None = None  # MDM under attention annealing: this step's look-ahead

    def to(self, device) -> MicroBatch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(
            move(self.inputs),
            move(self.targets),
            move(self.masked),
            move(self.p_mask),
            self.block_size,
            self.lookahead,
        )

    @property
    def num_tokens(self) -> int:
        return self.inputs.numel()

    def model_kwargs(self) -> dict:
        """Extra model inputs: block diffusion runs x_0 beside x_t (docs/design.md §11); an
        annealing step its look-ahead (§13.5)."""
        if self.lookahead is not None:
            return {"lookahead": self.lookahead}
        if self.block_size is None:
            return {}
        return {"clean_input_ids": self.targets, "block_size": self.block_size}

    @property
    def model_length(self) -> int:
        """Positions the model runs (and pipeline stages exchange): 2L' for block diffusion."""
        return self.inputs.shape[1] * (1 if self.block_size is None else 2)


BatchKind = Literal["pretrain", "sft"]


class BatchSource(Protocol):
    """What the Trainer asks of the data: this rank's micro-batches of step `s` (`train`) and of
    the i-th validation batch (`valid`), whether there is validation data, what a checkpoint
    records about the data (`meta`), a label for the progress bar (`name`), and which loss the
    batches are for (`kind`: the Trainer picks the loss once from it)."""

    name: str
    kind: BatchKind

    @property
    def has_valid(self) -> bool: ...

    def train(self, step: int) -> list: ...

    def valid(self, i: int) -> list: ...

    def meta(self) -> dict: ...


def micro_batch_positions(micro: int, dp_rank: int, micro_batch_size: int, dp_size: int):
    first = micro * micro_batch_size * dp_size + dp_rank * micro_batch_size
    return list(range(first, first + micro_batch_size))


def build_micro_batch(
    cfg: ExperimentConfig,
    source,
    mask_id: int,
    key,
    first_index: int,
    positions: list[int],
    var_len_prob: float | None = None,
) -> MicroBatch:
    """Samples `first_index + p` for p in `positions` (each `seq_length + 1` tokens), masked.

    `source` is anything with `sample(index) -> array`; `var_len_prob` overrides the config
    (evaluation uses full lengths). Block diffusion trains at the block size of step `key`
    (`diffusion.block_size_schedule`); validation keys use `diffusion.block_size`. Attention
    annealing gives training step `key` its look-ahead; validation runs bidirectional."""
    gbs, seq = cfg.train.global_batch_size, cfg.model.seq_length
    samples = torch.stack([torch.from_numpy(source.sample(first_index + p)) for p in positions])
    if cfg.model.objective == "arm":
        return MicroBatch(samples[:, :seq], samples[:, 1 : seq + 1], None, None)
    d = cfg.diffusion
    prob = d.var_len_prob if var_len_prob is None else var_len_prob
    length = crop_length(cfg.train.seed, key, positions[0], seq, prob)
    x0 = samples[:, :length]
    if cfg.model.objective == "block":
        size = d.block_size_at(key) if isinstance(key, int) else d.block_size
        per_block = d.block_t_sampling == "block"
        mb = block_forward_mask(
            x0,
            cfg.train.seed,
            key,
            positions,
            gbs,
            mask_id,
            d.eps,
            d.t_sampling,
            size,
            seq,
            per_block,
        )
        return MicroBatch(mb.xt, mb.x0, mb.masked, mb.p_mask, size)
    mb = forward_mask(x0, cfg.train.seed, key, positions, gbs, mask_id, d.eps, d.t_sampling)
    lookahead = d.lookahead_at(key, seq) if isinstance(key, int) else None
    return MicroBatch(mb.xt, mb.x0, mb.masked, mb.p_mask, lookahead=lookahead)
