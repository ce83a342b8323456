"""The SFT batch source of `mdm sft`: which examples a step takes, in which order, how padded.

Step s owns global samples ``[s * G, (s + 1) * G)``, as in pretraining. Sample k is example
``order_e[k mod N]`` of epoch ``e = k div N``, where ``order_e`` is a permutation of the N
training examples drawn from ``(seed, "sft-order", e)`` (identity with ``sft.shuffle: false``).
Within a step, data-parallel ranks take micro-batches in Megatron's order
(``data.batches.micro_batch_positions``) and every masking draw is keyed by
``(seed, step, position in the global batch)``. Nothing depends on the number of ranks or on
any state carried between steps, so a resumed run continues exactly and a TP/PP/DP layout sees
the same batches as a single process.

``sft.pad_to: longest`` pads every micro-batch of a step to the longest example of the whole
global batch: one shape per step (a pipeline schedule exchanges activations of a fixed shape)
and a loss that does not depend on the micro-batch split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.data.batches import micro_batch_positions
from megatron_mdm.data.sft import (
    SFTExample,
    SFTMicroBatch,
    build_sft_arm_micro_batch,
    build_sft_micro_batch,
)
from megatron_mdm.utils import keyed_generator

__all__ = ["SFTBatches", "epoch_order"]


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool = True) -> torch.Tensor:
    """The order of the n training examples in ``epoch``: a function of (seed, epoch) only."""
    if not shuffle:
        return torch.arange(n)
    gen = keyed_generator(seed, "sft-order", epoch)
    return torch.randperm(n, generator=gen)


class SFTBatches:
    """Micro-batches of fitted SFT examples for this data-parallel rank (the Trainer's batch
    source for `mdm sft`; see ``data.batches.BatchSource`` for the interface)."""

    name = "sft"
    kind = "sft"

    def __init__(
        self,
        cfg: ExperimentConfig,
        train: Sequence[SFTExample],
        valid: Sequence[SFTExample],
        eos_id: int,
        mask_id: int,
        dp_rank: int,
        dp_size: int,
    ) -> None:
        if not train:
            raise ValueError("no training examples")
        self.cfg, self.train_examples, self.valid_examples = cfg, list(train), list(valid)
        self.eos_id, self.mask_id = eos_id, mask_id
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.gas = cfg.gradient_accumulation_steps(dp_size)
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def has_valid(self) -> bool:
        return bool(self.valid_examples)

    def meta(self) -> dict:
        """What a checkpoint records about the data (for a person checking a resume)."""
        return {
            "sft_examples": {"train": len(self.train_examples), "valid": len(self.valid_examples)}
        }

    def example_index(self, k: int) -> int:
        """Index into the training examples of global sample k."""
        n = len(self.train_examples)
        epoch = k // n
        if epoch not in self._orders:
            if len(self._orders) > 2:  # a step spans at most two epochs unless G > N
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.cfg.train.seed, epoch, n, self.cfg.sft.shuffle)
        return int(self._orders[epoch][k % n])

    def train(self, step: int) -> list[SFTMicroBatch]:
        first = step * self.cfg.train.global_batch_size
        picks = [
            self.train_examples[self.example_index(first + p)]
            for p in range(self.cfg.train.global_batch_size)
        ]
        return self._micro_batches(picks, step)

    def valid(self, i: int) -> list[SFTMicroBatch]:
        """The i-th validation batch: valid examples in file order, wrapping around when the
        set is smaller than ``eval_iters`` global batches; masks keyed by ("valid", i)."""
        g, n = self.cfg.train.global_batch_size, len(self.valid_examples)
        picks = [self.valid_examples[(i * g + p) % n] for p in range(g)]
        return self._micro_batches(picks, ("valid", i))

    def _micro_batches(self, picks: list[SFTExample], key) -> list[SFTMicroBatch]:
        cfg = self.cfg
        seq, mbs = cfg.model.seq_length, cfg.train.micro_batch_size
        if cfg.sft.pad_to == "max":
            length = seq
        else:
            length = max(len(ex.prompt_ids) + len(ex.response_ids) + 1 for ex in picks)
        out = []
        for m in range(self.gas):
            positions = micro_batch_positions(m, self.dp_rank, mbs, self.dp_size)
            examples = [picks[p] for p in positions]
            if cfg.model.objective == "arm":
                out.append(build_sft_arm_micro_batch(examples, length, self.eos_id))
            else:
                out.append(
                    build_sft_micro_batch(
                        examples,
                        seq,
                        "max",
                        self.eos_id,
                        self.mask_id,
                        cfg.train.seed,
                        key,
                        positions,
                        eps=cfg.diffusion.eps,
                        length=length,
                    )
                )
        return out
