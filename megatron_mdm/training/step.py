"""One optimizer step: forward/backward over the step's micro-batches, DP reduction, update.

PP = 1: DeepSpeed's own loop (engine forward, `engine.backward`, `engine.step` per micro-batch),
which supports every ZeRO stage. PP > 1: megatron-core's 1F1B pipeline schedule runs all
micro-batches; DeepSpeed then only reduces gradients over data parallel and applies the update
(ZeRO 0/1; DeepSpeed cannot combine ZeRO-2/3 with pipeline parallelism).

Non-finite steps (docs/design.md §9): a micro-batch loss that is inf/NaN is back-propagated as
NaN (`_nan_if_not_finite`), so the step's gradient norm is non-finite on every rank exactly when a
loss or a gradient is. DeepSpeed's own optimizers (ZeRO 1-3, bf16) then skip the update by
themselves (their overflow check on the global gradient norm); the plain torch AdamW of ZeRO-0 has
no such check, so there the gradients are dropped before `engine.step()` and AdamW leaves every
parameter and moment untouched. Either way the LR schedule advances with the step count, and the
step reports `skipped`, identically on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from megatron.core import parallel_state as ps

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.parallel.distributed import ParallelContext
from megatron_mdm.parallel.mpu import GradNormMPU
from megatron_mdm.training.engine import deepspeed_clips
from megatron_mdm.training.objective import RunLoss


def _clip_and_norm(cfg: ExperimentConfig, engine) -> float:
    if deepspeed_clips(cfg):
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")
    from deepspeed.runtime.utils import clip_grad_norm_

    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    norm = clip_grad_norm_(engine.module.parameters(), max_norm, mpu=GradNormMPU())
    return float(norm)


def _nan_if_not_finite(loss: torch.Tensor) -> torch.Tensor:
    """The loss to back-propagate: itself when finite (times exactly 1.0), else NaN with NaN
    gradients everywhere, so that a non-finite loss always shows in the gradient norm."""
    factor = torch.where(
        torch.isfinite(loss), torch.ones_like(loss), torch.full_like(loss, float("nan"))
    )
    return loss * factor


def _uses_plain_torch_optimizer(engine) -> bool:
    """DeepSpeed's optimizer wrappers (ZeRO, bf16) check for overflow and skip by themselves."""
    return not hasattr(engine.optimizer, "overflow")


def _drop_update_if_not_finite(engine, grad_norm: float) -> None:
    """ZeRO-0: a non-finite norm leaves no gradient for AdamW, which then skips every parameter
    (no moment, step count or weight-decay update)."""
    if not math.isfinite(grad_norm) and _uses_plain_torch_optimizer(engine):
        for param in engine.module.parameters():
            param.grad = None


def _finish(engine, loss: float, grad_norm: float) -> dict:
    """The step's record; keeps the LR schedule on the step count after a skipped update."""
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    applied = engine.was_step_applied() and not (skipped and _uses_plain_torch_optimizer(engine))
    if skipped == applied:
        raise RuntimeError(
            f"DeepSpeed {'applied' if applied else 'skipped'} an optimizer step whose loss "
            f"({loss}) and gradient norm ({grad_norm}) say otherwise"
        )
    if skipped and not _uses_plain_torch_optimizer(engine) and engine.lr_scheduler is not None:
        engine.lr_scheduler.step()  # DeepSpeed does not step it on overflow
    return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped}


def _mean_over_data_parallel(value: torch.Tensor) -> float:
    group = ps.get_data_parallel_group()
    torch.distributed.all_reduce(value, group=group)
    return value.item() / torch.distributed.get_world_size(group=group)


def train_step_no_pipeline(
    cfg, ctx: ParallelContext, engine, micro_batches, loss_fn: RunLoss
) -> dict:
    losses = []
    grad_norm = float("nan")
    for i, mb in enumerate(micro_batches):
        mb = mb.to(ctx.device)
        output = engine(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))
        loss = loss_fn(output, mb)
        engine.backward(_nan_if_not_finite(loss))
        if i == len(micro_batches) - 1 and not deepspeed_clips(cfg):
            grad_norm = _clip_and_norm(cfg, engine)
            _drop_update_if_not_finite(engine, grad_norm)
        engine.step()
        losses.append(loss.detach().float())
    if deepspeed_clips(cfg):
        grad_norm = _clip_and_norm(cfg, engine)
    loss = _mean_over_data_parallel(torch.stack(losses).mean())
    return _finish(engine, loss, grad_norm)


def _pipeline_losses(
    ctx: ParallelContext, engine, micro_batches, loss_fn: RunLoss, forward_only: bool
):
    """Run megatron-core's pipeline schedule; the mean micro-batch loss, on every stage."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model) -> tuple[torch.Tensor, Callable]:
        mb = next(data_iterator).to(ctx.device)
        output = model(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))

        def loss_func(last_stage_output):
            loss = loss_fn(last_stage_output, mb)
            # clone: the schedule divides the returned loss in place by the micro-batch count.
            return _nan_if_not_finite(loss), {"loss": loss.detach().clone().float()}

        return output, loss_func

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=[engine.module],
        num_microbatches=len(micro_batches),
        seq_length=max(mb.model_length for mb in micro_batches),
        micro_batch_size=micro_batches[0].inputs.shape[0],
        forward_only=forward_only,
    )
    local = torch.zeros((), dtype=torch.float32, device=ctx.device)
    if ctx.is_last_stage:
        local = torch.stack([o["loss"] for o in outputs]).mean()
    torch.distributed.all_reduce(local, group=ps.get_pipeline_model_parallel_group())
    return local


def train_step_pipeline(cfg, ctx: ParallelContext, engine, micro_batches, loss_fn: RunLoss) -> dict:
    loss = _pipeline_losses(ctx, engine, micro_batches, loss_fn, forward_only=False)
    if cfg.parallel.zero_stage == 0:
        engine.allreduce_gradients()
    else:
        engine.optimizer.reduce_gradients(pipeline_parallel=True)
    grad_norm = float("nan")
    if not deepspeed_clips(cfg):
        grad_norm = _clip_and_norm(cfg, engine)
        _drop_update_if_not_finite(engine, grad_norm)
    engine.step()
    if deepspeed_clips(cfg):
        grad_norm = _clip_and_norm(cfg, engine)
    return _finish(engine, _mean_over_data_parallel(loss), grad_norm)


@torch.no_grad()
def eval_loss(cfg, ctx: ParallelContext, engine, micro_batches, loss_fn: RunLoss) -> float:
    """Mean loss over the micro-batches (forward only), averaged over data-parallel ranks."""
    if cfg.parallel.pipeline > 1:
        loss = _pipeline_losses(ctx, engine, micro_batches, loss_fn, forward_only=True)
    else:
        losses = []
        for mb in micro_batches:
            mb = mb.to(ctx.device)
            output = engine(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))
            losses.append(loss_fn(output, mb).float())
        loss = torch.stack(losses).mean()
    return _mean_over_data_parallel(loss)


def train_step(cfg, ctx, engine, micro_batches, loss_fn: RunLoss) -> dict:
    if cfg.parallel.pipeline > 1:
        return train_step_pipeline(cfg, ctx, engine, micro_batches, loss_fn)
    return train_step_no_pipeline(cfg, ctx, engine, micro_batches, loss_fn)
