"""The pretraining batch source: megatron-core GPTDataset samples with forward masks
(docs/design.md §3), for this data-parallel rank.

Step s owns samples [s * G, (s + 1) * G) of the train split; `data.batches` decides which
positions this rank takes and masks them keyed by (seed, step, position). Validation batch i is
masked keyed by ("valid", i), without cropping, so the same samples and masks come back at every
evaluation and in every run with the same seed.
"""

from __future__ import annotations

from pathlib import Path

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.data.batches import MicroBatch, build_micro_batch, micro_batch_positions
from megatron_mdm.data.prepare import resolve_blend
from megatron_mdm.data.pretrain_dataset import build_sample_sources
from megatron_mdm.parallel.distributed import ParallelContext


class PretrainBatches:
    """A `data.batches.BatchSource` over the run's indexed datasets."""

    name = "train"
    kind = "pretrain"
    has_valid = True

    def __init__(self, cfg: ExperimentConfig, ctx: ParallelContext, tokenizer, vocab) -> None:
        self.cfg, self.ctx, self.vocab = cfg, ctx, vocab
        self.gas = cfg.gradient_accumulation_steps(ctx.dp_size)
        blend = resolve_blend(cfg, tokenizer, is_builder=ctx.is_logging_rank)
        cache = Path(cfg.train.output_dir) / "data" / "index_cache"
        self.sources = build_sample_sources(cfg, tokenizer, blend, cache)

    def meta(self) -> dict:
        return {}

    def train(self, step: int) -> list[MicroBatch]:
        return self._micro_batches("train", step, step * self.cfg.train.global_batch_size)

    def valid(self, i: int) -> list[MicroBatch]:
        g = self.cfg.train.global_batch_size
        return self._micro_batches("valid", ("valid", i), i * g, var_len_prob=0.0)

    def _micro_batches(self, split: str, key, first_index: int, var_len_prob=None):
        t = self.cfg.train
        return [
            build_micro_batch(
                self.cfg,
                self.sources[split],
                self.vocab.mask_id,
                key,
                first_index,
                micro_batch_positions(m, self.ctx.dp_rank, t.micro_batch_size, self.ctx.dp_size),
                var_len_prob=var_len_prob,
            )
            for m in range(self.gas)
        ]
