"""`mdm train` (and `mdm sft`): set up the parallel run, then step, log and checkpoint until
max_steps.

The Trainer does not know where batches come from: a batch source (``data.batches.BatchSource``:
``data.pretrain_batches.PretrainBatches`` for `mdm train`, ``data.sft_batches.SFTBatches`` for
`mdm sft`) gives each step's micro-batches and the validation batches, and the loss is chosen
once from its kind (``training.objective.loss_for``). Resume, preemption, checkpoints, metrics
and the non-finite step policy (docs/design.md §9) are therefore one implementation for both.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from megatron_mdm.checkpointing import deepspeed_io, run_dir
from megatron_mdm.checkpointing.adam_state import load_adam_state
from megatron_mdm.checkpointing.canonical import shard_for_rank
from megatron_mdm.checkpointing.causal_import import resolve_init_from
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
from megatron_mdm.training.console import progress_bar, say
from megatron_mdm.training.engine import build_engine
from megatron_mdm.training.metrics import MetricsWriter, check_wandb, peak_tflops_per_device
from megatron_mdm.training.objective import loss_for
from megatron_mdm.training.preemption import PreemptionWatcher
from megatron_mdm.training.run_lock import RunLock, RunLockedError
from megatron_mdm.training.samples import sample_texts, sampling_unavailable
from megatron_mdm.training.schedule import warmup_warning
from megatron_mdm.training.step import eval_loss, train_step
from megatron_mdm.utils import MDMError


class NonFiniteStepError(MDMError):
    """Non-finite loss or gradient norm under train.nonfinite=stop, or too many in a row."""


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


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


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
    """What happened since the last logged step: tokens, FLOPs, losses, skipped steps."""

    def __init__(self) -> None:
        self.tokens, self.flops, self.start = 0, 0.0, time.perf_counter()
        self.losses: list[float] = []
        self.skipped = 0
        self.last: dict = {}

    def add(self, out: dict, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops
        self.last = out
        if out["skipped"]:
            self.skipped += 1
        else:
            self.losses.append(out["loss"])

    def mean_loss(self) -> float | None:
        """Mean over the interval's applied steps (a skipped step's loss is not finite)."""
        return sum(self.losses) / len(self.losses) if self.losses else None

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        ctx: ParallelContext,
        batch_source=PretrainBatches,
        stop: PreemptionWatcher | None = None,
    ):
        """``batch_source(cfg, ctx, tokenizer, vocab)`` builds the batch source (see
        ``data.batches.BatchSource``); it is called once the tokenizer and vocabulary are known.
        ``stop``: the command's armed watcher (start-up checks and the per-step check)."""

        self.cfg, self.ctx = cfg, ctx
        self.preemption = stop if stop is not None else PreemptionWatcher()
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
        self.preemption.stop_if_requested(ctx.device)
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
        self.preemption.stop_if_requested(ctx.device)
        self.nonfinite_in_a_row = 0
        self.metrics = None
        if ctx.is_logging_rank:
            self.metrics = MetricsWriter(cfg, self.step)

    def _load_weights(self, model, source) -> None:
        shape = ModelShape.from_config(self.cfg.model, self.vocab)
        canonical = canonical_weights(
            source, shape, self.vocab.padded_size, mask_id=self.vocab.mask_id
        )
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
            say(message)

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
        warning = warmup_warning(cfg.train)
        if warning:
            self._say(warning)
        if cfg.train.sample_interval > 0 and sampling_unavailable(cfg):
            self._say(sampling_unavailable(cfg))

    def _step_flops(self, batches) -> float:
        m, padded = self.cfg.model, self.vocab.padded_size
        per_rank = sum(
            flops_per_token(m, padded, b.inputs.shape[1]) * b.num_tokens for b in batches
        )
        return per_rank * self.ctx.dp_size

    def _log(self, lr: float, window: _Window) -> None:
        """One metrics record (and log line) for the interval that ends at this step."""
        t, ctx, out = self.cfg.train, self.ctx, window.last
        elapsed = window.elapsed()
        peak = peak_tflops_per_device(self.cfg.logging.peak_tflops)
        achieved = window.flops / elapsed / ctx.world_size / 1e12
        record = {
            "step": self.step,
            "loss": window.mean_loss(),
            "loss_last": out["loss"],
            "lr": lr,
            "grad_norm": out["grad_norm"],
            "nonfinite_steps": window.skipped,
            "consumed_samples": self.step * t.global_batch_size,
            "tokens_per_s": window.tokens / elapsed,
            "mfu": None if peak is None else achieved / peak,
            "tflops_per_device": achieved,
            "peak_mem_gb": peak_memory_gb(),
        }
        if self.metrics is not None:
            self.metrics.write(record)
        mfu = _fmt(None if peak is None else 100 * record["mfu"], ".2f")
        skipped = f" | {window.skipped} non-finite step(s) skipped" if window.skipped else ""
        self._say(
            f"step {self.step:>6} | loss {_fmt(record['loss'], '.4f')} | lr {lr:.3e} | "
            f"grad_norm {out['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
            f"MFU {mfu}{'%' if peak else ''}{skipped}"
        )

    def _check_finite(self, out: dict) -> None:
        """train.nonfinite: count skipped steps; stop at the first one (stop) or after
        max_nonfinite_steps in a row (skip), naming the step."""
        t = self.cfg.train
        if not out["skipped"]:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        bad = [
            f"{name} ({value})"
            for name, value in (("loss", out["loss"]), ("gradient norm", out["grad_norm"]))
            if not math.isfinite(value)
        ]
        what = f"step {self.step}: non-finite {' and '.join(bad)}"
        if t.nonfinite == "stop":
            raise NonFiniteStepError(
                f"{what}: stopping (train.nonfinite=stop); the weights and the checkpoints are "
                "those of the last finite step"
            )
        if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
            raise NonFiniteStepError(
                f"{what}: {self.nonfinite_in_a_row} non-finite steps in a row (since step "
                f"{self.step - self.nonfinite_in_a_row + 1}, train.max_nonfinite_steps = "
                f"{t.max_nonfinite_steps}); stopping with the weights of step "
                f"{self.step - self.nonfinite_in_a_row}"
            )
        self._say(f"{what}: optimizer step skipped (train.nonfinite=skip)")

    def _maybe_evaluate(self) -> None:
        t = self.cfg.train
        if t.eval_interval <= 0 or not self.batches.has_valid:
            return
        if self.step % t.eval_interval == 0 or self.step == t.max_steps:
            val = self.evaluate()
            if self.metrics is not None:
                self.metrics.write_validation(self.step, val)
            self._say(f"step {self.step:>6} | validation loss {val:.4f}")

    def _maybe_sample(self) -> None:
        t = self.cfg.train
        if (
            t.sample_interval <= 0
            or self.step % t.sample_interval
            or sampling_unavailable(self.cfg)
        ):
            return
        if not self.ctx.is_logging_rank:
            return
        texts = sample_texts(
            self.cfg,
            self.engine.module,
            self.tokenizer,
            self.vocab.mask_id,
            self.ctx.device,
            self.step,
        )
        self.metrics.write_samples(self.step, t.sample_prompt, texts)
        self._say(f"step {self.step:>6} | sample: {t.sample_prompt}{texts[0]!r}")

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
        """Step until max_steps: train step, log, evaluate, sample, save or stop; save at the
        end."""
        t, log, ctx = self.cfg.train, self.cfg.logging, self.ctx
        self._describe()
        self.preemption.stop_if_requested(ctx.device)
        bar = progress_bar(
            t.max_steps, self.step, log.progress and ctx.is_logging_rank, self.batches.name
        )
        window = _Window()
        stopped = False
        try:
            while self.step < t.max_steps and not stopped:
                batches = self.batches.train(self.step)
                lr = self.engine.get_lr()[0]  # what this step applies (the LambdaLR's state)
                out = train_step(self.cfg, ctx, self.engine, batches, self.loss_fn)
                self.step += 1
                tokens = sum(b.num_tokens for b in batches) * ctx.dp_size
                window.add(out, tokens, self._step_flops(batches))
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if self.step % log.interval == 0 or self.step == t.max_steps:
                    self._log(lr, window)
                    window = _Window()
                try:
                    self._check_finite(out)
                except NonFiniteStepError:
                    if window.last:  # the record of the interval that ends here
                        self._log(lr, window)
                    raise
                self._maybe_evaluate()
                self._maybe_sample()
                stopped = self._save_or_stop()
            if not stopped and self.cfg.checkpoint.save_at_end:
                self.save()
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()


@contextlib.contextmanager
def training_session(cfg: ExperimentConfig, stop: PreemptionWatcher):
    """The process group and the output folder's lock around a run: checks that need no
    process group first (one line each), then the group, the lock (rank 0 takes it, every rank
    learns the outcome), a start-up stop check (after the group exists, so that every rank
    stops together even if the signal reached only some); the group is torn down at the end
    (without the final barrier when the run failed, as a peer may be gone)."""
    check_transformer_impl(cfg)
    check_wandb(cfg)
    torch.manual_seed(cfg.train.seed)
    ctx = init_distributed(cfg)
    clean = False
    try:
        with _output_lock(cfg, ctx):
            stop.stop_if_requested(ctx.device)
            yield ctx
        clean = True
    finally:
        shutdown(barrier=clean)


@contextlib.contextmanager
def _output_lock(cfg: ExperimentConfig, ctx: ParallelContext):
    lock, error = None, None
    if ctx.is_logging_rank:
        lock = RunLock(cfg.train.output_dir, say)
        try:
            lock.acquire()
        except RunLockedError as exc:
            lock, error = None, exc
    failed = torch.tensor([error is not None], dtype=torch.int32, device=ctx.device)
    torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item():
        raise RunLockedError(f"{cfg.train.output_dir}: another run owns it (see rank 0)")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def run_training(cfg: ExperimentConfig, stop: PreemptionWatcher | None = None) -> None:
    """`mdm train`: ``stop`` is the command's armed signal watcher (a fresh one, armed here,
    when called from Python)."""
    cfg = resolve_init_from(cfg)  # a hub id or causal LM folder (checkpointing/causal_import.py)
    with contextlib.ExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(PreemptionWatcher())
        with training_session(cfg, stop) as ctx:
            Trainer(cfg, ctx, stop=stop).train()
