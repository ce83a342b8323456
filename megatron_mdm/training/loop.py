"""`mdm train` (and `mdm sft`): set up the parallel run, then step, log and checkpoint until
max_steps.

The Trainer does not know where batches come from: a batch source (``PretrainBatches`` here,
``data.sft_batches.SFTBatches`` for `mdm sft`) gives each step's micro-batches and the
validation batches, and ``training.step.objective_loss`` picks the loss from the batch type.
Resume, preemption, checkpoints and metrics are therefore one implementation for both.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.data.batches import build_micro_batch, micro_batch_positions
from megatron_mdm.data.prepare import resolve_blend
from megatron_mdm.data.pretrain_dataset import build_sample_sources
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.parallel.distributed import ParallelContext, init_distributed, shutdown
from megatron_mdm.training import checkpoint as ckpt
from megatron_mdm.training.flops import flops_per_token, peak_tflops_per_device, total_params
from megatron_mdm.training.metrics import MetricsWriter
from megatron_mdm.training.preemption import PreemptionWatcher
from megatron_mdm.training.schedule import lr_at


def _vocab(cfg: ExperimentConfig, tokenizer, tp: int) -> VocabLayout:
    size = cfg.model.vocab_size or tokenizer.vocab_size
    return VocabLayout.build(
        size, cfg.model.mask_token_id, cfg.model.make_vocab_size_divisible_by, tp
    )


def peak_memory_gb() -> float:
    """Peak device memory on GPU (allocator high-water mark); peak RSS of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


class PretrainBatches:
    """Pretraining micro-batches: megatron-core GPTDataset samples with DESIGN.md §3 masks.

    A batch source gives ``train(step)`` (this rank's micro-batches of that step) and
    ``valid(i)`` (of the i-th validation batch), says ``has_valid``, and adds ``meta()`` to
    checkpoints; ``name`` labels the progress bar.
    """

    name = "train"
    has_valid = True

    def __init__(self, cfg: ExperimentConfig, ctx: ParallelContext, tokenizer, vocab) -> None:
        self.cfg, self.ctx, self.vocab = cfg, ctx, vocab
        self.gas = cfg.gradient_accumulation_steps(ctx.dp_size)
        blend = resolve_blend(cfg, tokenizer, is_builder=ctx.is_logging_rank)
        cache = Path(cfg.train.output_dir) / "data" / "index_cache"
        self.sources = build_sample_sources(cfg, tokenizer, blend, cache)

    def meta(self) -> dict:
        return {}

    def train(self, step: int):
        return self._micro_batches("train", step, step * self.cfg.train.global_batch_size)

    def valid(self, i: int):
        """Masks keyed by ("valid", i), no cropping: the same samples and masks at every
        evaluation and in every run with the same seed, so the numbers compare."""
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


class Trainer:
    def __init__(self, cfg: ExperimentConfig, ctx: ParallelContext, batch_source=PretrainBatches):
        """``batch_source(cfg, ctx, tokenizer, vocab)`` builds the batch source (see
        :class:`PretrainBatches`); it is called after the tokenizer and vocabulary are known."""
        from megatron_mdm.model.builder import build_model
        from megatron_mdm.training.engine import build_engine

        self.cfg, self.ctx = cfg, ctx
        self.tokenizer = build_tokenizer(cfg.data.tokenizer.type, cfg.data.tokenizer.model)
        self.vocab = _vocab(cfg, self.tokenizer, ctx.tp_size)
        self.batches = batch_source(cfg, ctx, self.tokenizer, self.vocab)
        model = build_model(cfg, self.vocab, ctx.on_gpu).to(ctx.device)
        resume_from = ckpt.find_resume_checkpoint(cfg)
        resume_meta = ckpt.read_meta(resume_from) if resume_from is not None else {}
        weights_only = bool(resume_meta.get("weights_only"))
        if weights_only:
            self._load_weights(model, resume_from)
        elif resume_from is None and cfg.train.init_from:
            self._load_weights(model, cfg.train.init_from)
        self.engine = build_engine(cfg, model, ctx)
        self.step = 0
        if resume_from is not None and not weights_only:
            self.step = ckpt.load_checkpoint(self.engine, resume_from, ctx).step
        elif weights_only:
            self.step = int(resume_meta["step"])
            self._fast_forward_lr_schedule()
        if resume_from is not None:
            kind = "weights only, fresh optimizer" if weights_only else "full state"
            self._say(f"resumed from {resume_from} at step {self.step} ({kind})")
        self.preemption = PreemptionWatcher()  # armed by run_training around train()
        self.metrics = None
        if ctx.is_logging_rank:
            self.metrics = MetricsWriter(cfg.train.output_dir, cfg.logging.tensorboard, self.step)

    def _load_weights(self, model, source) -> None:
        from megatron_mdm.convert.layouts import ModelShape
        from megatron_mdm.convert.weights import canonical_weights, load_weights_into

        shape = ModelShape.from_config(self.cfg.model, self.vocab)
        canonical = canonical_weights(source, shape, self.vocab.padded_size)
        load_weights_into(model, canonical, self.ctx, self.cfg.model.num_layers, str(source))
        self._say(f"loaded weights from {source}")

    def _fast_forward_lr_schedule(self) -> None:
        """A weights-only checkpoint at step k: continue the LR schedule at step k."""
        scheduler = self.engine.lr_scheduler
        if self.step > 0 and scheduler is not None:
            scheduler.last_epoch = self.step - 1
            scheduler.step()

    def _say(self, message: str) -> None:
        if self.ctx.is_logging_rank:
            tqdm.write(message)

    def evaluate(self) -> float:
        """Validation loss on the first `eval_iters` validation batches of the batch source."""
        from megatron_mdm.training.step import eval_loss

        losses = [
            eval_loss(self.cfg, self.ctx, self.engine, self.batches.valid(i))
            for i in range(self.cfg.train.eval_iters)
        ]
        return sum(losses) / len(losses)

    def save(self) -> None:
        t = self.cfg.train
        meta = {
            "consumed_samples": self.step * t.global_batch_size,
            "tokenizer": {
                "type": self.tokenizer.name,
                "model": self.cfg.data.tokenizer.model,
                "vocab_size": self.tokenizer.vocab_size,
                "eos_id": self.tokenizer.eos_id,
            },
            "vocab": {
                "tokenizer_size": self.vocab.tokenizer_size,
                "mask_id": self.vocab.mask_id,
                "padded_size": self.vocab.padded_size,
            },
            "parallel": {"tensor": self.ctx.tp_size, "pipeline": self.ctx.pp_size},
            **self.batches.meta(),
        }
        path = ckpt.save_checkpoint(self.engine, self.cfg, self.ctx, self.step, meta)
        self._say(f"saved checkpoint {path}")

    def train(self) -> None:
        from megatron_mdm.training.step import train_step

        cfg, ctx = self.cfg, self.ctx
        t, log = cfg.train, cfg.logging
        m = cfg.model
        self._say(
            f"model: {total_params(m, self.vocab.padded_size) / 1e6:.2f}M parameters, "
            f"objective={m.objective}, TP={ctx.tp_size} PP={ctx.pp_size} DP={ctx.dp_size} "
            f"ZeRO-{cfg.parallel.zero_stage}, device={ctx.device.type}"
        )
        peak = peak_tflops_per_device(log.peak_tflops) * 1e12 * ctx.world_size
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            disable=not (log.progress and ctx.is_logging_rank),
            desc=self.batches.name,
            dynamic_ncols=True,
        )
        window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
        while self.step < t.max_steps:
            batches = self.batches.train(self.step)
            out = train_step(cfg, ctx, self.engine, batches)
            lr = lr_at(self.step, t)
            self.step += 1
            tokens = sum(b.num_tokens for b in batches) * ctx.dp_size
            window_tokens += tokens
            window_flops += (
                sum(
                    flops_per_token(m, self.vocab.padded_size, b.inputs.shape[1]) * b.num_tokens
                    for b in batches
                )
                * ctx.dp_size
            )
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{lr:.2e}")
            if self.step % log.interval == 0 or self.step == t.max_steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "step": self.step,
                    "loss": out["loss"],
                    "lr": lr,
                    "grad_norm": out["grad_norm"],
                    "consumed_samples": self.step * t.global_batch_size,
                    "tokens_per_s": window_tokens / elapsed,
                    "mfu": window_flops / elapsed / peak,
                    "tflops_per_device": window_flops / elapsed / ctx.world_size / 1e12,
                    "peak_mem_gb": peak_memory_gb(),
                }
                if self.metrics is not None:
                    self.metrics.write(record)
                self._say(
                    f"step {self.step:>6} | loss {out['loss']:.4f} | lr {lr:.3e} | "
                    f"grad_norm {out['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
                    f"MFU {100 * record['mfu']:.2f}%"
                )
                window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
            if (
                t.eval_interval > 0
                and self.batches.has_valid
                and (self.step % t.eval_interval == 0 or self.step == t.max_steps)
            ):
                val = self.evaluate()
                if self.metrics is not None:
                    self.metrics.write({"step": self.step, "val_loss": val})
                self._say(f"step {self.step:>6} | validation loss {val:.4f}")
            interval = cfg.checkpoint.save_interval
            saved = False
            if interval > 0 and self.step % interval == 0 and self.step < t.max_steps:
                self.save()
                saved = True
            if self.step < t.max_steps and self.preemption.should_stop(ctx.device):
                self._say(
                    f"received {self.preemption.name}: checkpointing step {self.step}, exiting"
                )
                if not saved:
                    self.save()
                break
        else:
            if cfg.checkpoint.save_at_end:
                self.save()
        bar.close()
        if self.metrics is not None:
            self.metrics.close()


def run_training(cfg: ExperimentConfig) -> None:
    from megatron_mdm.model.spec import check_transformer_impl

    check_transformer_impl(cfg)
    torch.manual_seed(cfg.train.seed)
    ctx = init_distributed(cfg)
    try:
        trainer = Trainer(cfg, ctx)
        with trainer.preemption:
            trainer.train()
    finally:
        shutdown()
