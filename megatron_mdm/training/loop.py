"""`mdm train` (and `mdm sft`): set up the parallel run, then step, log and checkpoint until
max_steps.

The Trainer does not know where batches come from: a batch source (``data.batches.BatchSource``:
``data.pretrain_batches.PretrainBatches`` for `mdm train`, ``data.sft_batches.SFTBatches`` for
`mdm sft`) gives each step's micro-batches and the validation batches, and the loss is chosen
once from its kind (``training.objective.loss_for``). Resume, preemption, checkpoints and
metrics are therefore one implementation for both.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from megatron_mdm.checkpointing import deepspeed_io, run_dir
from megatron_mdm.checkpointing.adam_state import load_adam_state
from megatron_mdm.checkpointing.canonical import shard_for_rank
from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.convert.layouts import ModelShape
from megatron_mdm.data.pretrain_batches import PretrainBatches
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.model.accounting import flops_per_token, total_params
from megatron_mdm.model.builder import build_model
from megatron_mdm.model.spec import check_transformer_impl
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.parallel.distributed import ParallelContext, init_distributed, shutdown
from megatron_mdm.training import adam_restore
from megatron_mdm.training.engine import build_engine
from megatron_mdm.training.metrics import MetricsWriter, peak_tflops_per_device
from megatron_mdm.training.objective import loss_for
from megatron_mdm.training.preemption import PreemptionWatcher
from megatron_mdm.training.schedule import lr_at
from megatron_mdm.training.step import eval_loss, train_step


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


def _check_adam_target(cfg: ExperimentConfig, resume_from, with_adam: bool) -> None:
    if with_adam and not adam_restore.supported(cfg):
        raise ConfigError(
            f"{resume_from} holds a resharded Adam state, which resumes at "
            "parallel.zero_stage 1 or 2 (any precision) or 0 (fp32); reshard it again with "
            "--weights-only to resume here with a fresh optimizer",
            source=cfg.source,
            key="checkpoint.resume",
        )


class _Window:
    """Tokens and FLOPs since the last logged step, and when that window started."""

    def __init__(self) -> None:
        self.tokens, self.flops, self.start = 0, 0.0, time.perf_counter()

    def add(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


class Trainer:
    def __init__(self, cfg: ExperimentConfig, ctx: ParallelContext, batch_source=PretrainBatches):
        """``batch_source(cfg, ctx, tokenizer, vocab)`` builds the batch source (see
        ``data.batches.BatchSource``); it is called once the tokenizer and vocabulary are known."""

        self.cfg, self.ctx = cfg, ctx
        resume_from = run_dir.find_resume_checkpoint(cfg)
        resume_meta = run_dir.read_meta(resume_from) if resume_from is not None else {}
        weights_only = bool(resume_meta.get("weights_only"))
        with_adam = weights_only and bool(resume_meta.get("optimizer_state"))
        if resume_from is not None:  # before anything is built: what cannot resume fails now
            run_dir.check_resume_layout(cfg, resume_from, resume_meta, ctx.dp_size)
            _check_adam_target(cfg, resume_from, with_adam)
        self.tokenizer = build_tokenizer(cfg.data.tokenizer.type, cfg.data.tokenizer.model)
        self.vocab = _vocab(cfg, self.tokenizer, ctx.tp_size)
        self.batches = batch_source(cfg, ctx, self.tokenizer, self.vocab)
        self.loss_fn = loss_for(cfg, self.batches.kind)
        model = build_model(cfg, self.vocab, ctx.on_gpu).to(ctx.device)
        if weights_only:
            self._load_weights(model, resume_from)
        elif resume_from is None and cfg.train.init_from:
            self._load_weights(model, cfg.train.init_from)
        self.engine = build_engine(cfg, model, ctx)
        self.step = 0
        if resume_from is not None and not weights_only:
            self.step = deepspeed_io.load_checkpoint(self.engine, resume_from, ctx).step
        elif weights_only:
            self.step = int(resume_meta["step"])
            self._fast_forward_lr_schedule()
            if with_adam:
                self._restore_adam(model, resume_from)
        if resume_from is not None:
            kind = "full state"
            if weights_only:
                kind = "weights and Adam state" if with_adam else "weights only, fresh optimizer"
            self._say(f"resumed from {resume_from} at step {self.step} ({kind})")
        self.preemption = PreemptionWatcher()  # armed by run_training around train()
        self.metrics = None
        if ctx.is_logging_rank:
            self.metrics = MetricsWriter(cfg.train.output_dir, cfg.logging.tensorboard, self.step)

    def _load_weights(self, model, source) -> None:
        shape = ModelShape.from_config(self.cfg.model, self.vocab)
        canonical = canonical_weights(source, shape, self.vocab.padded_size)
        load_weights_into(model, canonical, self.ctx, self.cfg.model.num_layers, str(source))
        self._say(f"loaded weights from {source}")

    def _restore_adam(self, model, source) -> None:
        """The fp32 master weights, Adam moments and step of a resharded checkpoint, this
        rank's slice of them, into the engine (`training.adam_restore`)."""
        state, _, _ = load_adam_state(source)
        ctx, num_layers = self.ctx, self.cfg.model.num_layers
        local = {
            key: shard_for_rank(
                canonical, ctx.tp_rank, ctx.tp_size, ctx.pp_rank, ctx.pp_size, num_layers
            )
            for key, canonical in {"fp32": state.master, **state.moments}.items()
        }
        adam_restore.restore_adam(self.engine, model, local, state.step, str(source))

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

        losses = [
            eval_loss(self.cfg, self.ctx, self.engine, self.batches.valid(i), self.loss_fn)
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
            "parallel": {
                "tensor": self.ctx.tp_size,
                "pipeline": self.ctx.pp_size,
                "data": self.ctx.dp_size,
            },
            **self.batches.meta(),
        }
        saved = deepspeed_io.save_checkpoint(self.engine, self.cfg, self.ctx, self.step, meta)
        if saved.written:
            self._say(f"saved checkpoint {saved.path}")
        else:
            self._say(
                f"checkpoint {saved.path} already exists and is complete: left as it is "
                "(a complete checkpoint is never rewritten)"
            )

    def _describe(self) -> None:
        cfg, ctx, m = self.cfg, self.ctx, self.cfg.model
        self._say(
            f"model: {total_params(m, self.vocab.padded_size) / 1e6:.2f}M parameters, "
            f"objective={m.objective}, TP={ctx.tp_size} PP={ctx.pp_size} DP={ctx.dp_size} "
            f"ZeRO-{cfg.parallel.zero_stage}, device={ctx.device.type}"
        )

    def _step_flops(self, batches) -> float:
        m, padded = self.cfg.model, self.vocab.padded_size
        per_rank = sum(
            flops_per_token(m, padded, b.inputs.shape[1]) * b.num_tokens for b in batches
        )
        return per_rank * self.ctx.dp_size

    def _log(self, out: dict, lr: float, window: _Window) -> None:
        """One metrics record (and log line) for the interval that ends at this step."""
        t, ctx = self.cfg.train, self.ctx
        elapsed = window.elapsed()
        peak = peak_tflops_per_device(self.cfg.logging.peak_tflops) * 1e12 * ctx.world_size
        record = {
            "step": self.step,
            "loss": out["loss"],
            "lr": lr,
            "grad_norm": out["grad_norm"],
            "consumed_samples": self.step * t.global_batch_size,
            "tokens_per_s": window.tokens / elapsed,
            "mfu": window.flops / elapsed / peak,
            "tflops_per_device": window.flops / elapsed / ctx.world_size / 1e12,
            "peak_mem_gb": peak_memory_gb(),
        }
        if self.metrics is not None:
            self.metrics.write(record)
        self._say(
            f"step {self.step:>6} | loss {out['loss']:.4f} | lr {lr:.3e} | "
            f"grad_norm {out['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
            f"MFU {100 * record['mfu']:.2f}%"
        )

    def _maybe_evaluate(self) -> None:
        t = self.cfg.train
        if t.eval_interval <= 0 or not self.batches.has_valid:
            return
        if self.step % t.eval_interval == 0 or self.step == t.max_steps:
            val = self.evaluate()
            if self.metrics is not None:
                self.metrics.write({"step": self.step, "val_loss": val})
            self._say(f"step {self.step:>6} | validation loss {val:.4f}")

    def _save_or_stop(self) -> bool:
        """Periodic checkpoint; on a stop signal (any rank) a checkpoint and True: stop now."""
        t, interval = self.cfg.train, self.cfg.checkpoint.save_interval
        saved = False
        if interval > 0 and self.step % interval == 0 and self.step < t.max_steps:
            self.save()
            saved = True
        if self.step < t.max_steps and self.preemption.should_stop(self.ctx.device):
            self._say(f"received {self.preemption.name}: checkpointing step {self.step}, exiting")
            if not saved:
                self.save()
            return True
        return False

    def train(self) -> None:
        """Step until max_steps: train step, log, evaluate, save or stop; save at the end."""
        t, log, ctx = self.cfg.train, self.cfg.logging, self.ctx
        self._describe()
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            disable=not (log.progress and ctx.is_logging_rank),
            desc=self.batches.name,
            dynamic_ncols=True,
        )
        window = _Window()
        stopped = False
        while self.step < t.max_steps and not stopped:
            batches = self.batches.train(self.step)
            out = train_step(self.cfg, ctx, self.engine, batches, self.loss_fn)
            lr = lr_at(self.step, t)
            self.step += 1
            window.add(sum(b.num_tokens for b in batches) * ctx.dp_size, self._step_flops(batches))
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{lr:.2e}")
            if self.step % log.interval == 0 or self.step == t.max_steps:
                self._log(out, lr, window)
                window = _Window()
            self._maybe_evaluate()
            stopped = self._save_or_stop()
        if not stopped and self.cfg.checkpoint.save_at_end:
            self.save()
        bar.close()
        if self.metrics is not None:
            self.metrics.close()


def run_training(cfg: ExperimentConfig) -> None:

    check_transformer_impl(cfg)
    torch.manual_seed(cfg.train.seed)
    ctx = init_distributed(cfg)
    try:
        trainer = Trainer(cfg, ctx)
        with trainer.preemption:
            trainer.train()
    finally:
        shutdown()
