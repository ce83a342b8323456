"""DeepSpeed engine for a megatron-core model: ZeRO config, AdamW, LR schedule, clipping.

The optimizer is a client torch AdamW (DeepSpeed's fused/CPU Adam need a JIT compile we don't
want on every fresh machine); ZeRO partitions it all the same. With `parallel.offload_optimizer`
on a GPU, DeepSpeed's own AdamW type (its compiled CPU Adam: the fast way to step fp32 master
weights held in host memory); without CUDA the client torch AdamW, which already runs on the CPU,
steps the offloaded partitions (`zero_force_ds_cpu_optimizer: false`), so no compile is needed.

That compile (torch's JIT extension build) holds a lock file in the build folder; a process
killed mid-build leaves it behind and torch then waits for it forever, silently. Before DeepSpeed
builds the op we wait for such a lock at most ``BUILD_LOCK_WAIT_S``, saying which file we wait
for, then stop with one line naming it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.parallel.distributed import ParallelContext, without_shm_allreduce
from megatron_mdm.parallel.mpu import MegatronMPU
from megatron_mdm.training.schedule import lr_multiplier
from megatron_mdm.utils import MDMError

BUILD_LOCK_WAIT_S = 600.0
CPU_ADAM_OP = "cpu_adam"  # deepspeed.ops.op_builder CPUAdamBuilder.NAME


class BuildLockError(MDMError):
    """A JIT build lock that is never released (left by a killed process)."""


def wait_for_build_lock(name: str, timeout_s: float = BUILD_LOCK_WAIT_S, say=print) -> None:
    """Return once torch's build folder of extension `name` has no lock file; say which file we
    wait for, and raise BuildLockError naming it after `timeout_s` seconds."""
    from torch.utils import cpp_extension

    lock = Path(cpp_extension._get_build_directory(name, verbose=False)) / "lock"
    deadline = time.monotonic() + timeout_s
    if lock.exists():
        say(f"waiting for {lock}: another process is building DeepSpeed's {name} op")
    while lock.exists():
        if time.monotonic() >= deadline:
            raise BuildLockError(
                f"{lock}: still there after {timeout_s:.0f} s; no build is finishing (a process "
                "killed while building leaves it behind): delete it and run again"
            )
        time.sleep(min(1.0, timeout_s))


def deepspeed_clips(cfg: ExperimentConfig) -> bool:
    """At ZeRO-0 we clip ourselves (see `mpu.GradNormMPU`); ZeRO-1+ clips inside DeepSpeed."""
    return cfg.parallel.zero_stage > 0


def uses_deepspeed_cpu_adam(cfg: ExperimentConfig, ctx: ParallelContext) -> bool:
    return cfg.parallel.offload_optimizer and ctx.on_gpu


def deepspeed_config(cfg: ExperimentConfig, ctx: ParallelContext) -> dict:
    t, par = cfg.train, cfg.parallel
    # With PP the megatron schedule runs all micro-batches of a step; DeepSpeed sees one.
    gas = 1 if par.pipeline > 1 else cfg.gradient_accumulation_steps(ctx.dp_size)
    micro = t.micro_batch_size if par.pipeline == 1 else t.global_batch_size // ctx.dp_size
    ds = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * ctx.dp_size,
        "gradient_clipping": t.grad_clip if deepspeed_clips(cfg) else 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": par.zero_stage},
        # bf16: DeepSpeed's optimizers skip a step whose gradient norm is not finite
        # (training/step.py relies on it; explicit, as older releases defaulted to False).
        "bf16": {"enabled": t.precision in ("bf16", "fp8"), "check_grad_overflow": True},
    }
    if par.zero_stage > 0:
        ds["zero_optimization"].update(
            {"contiguous_gradients": par.pipeline == 1, "overlap_comm": False}
        )
    if par.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": ctx.on_gpu}
    if par.offload_optimizer and not uses_deepspeed_cpu_adam(cfg, ctx):
        ds["zero_force_ds_cpu_optimizer"] = False
    if uses_deepspeed_cpu_adam(cfg, ctx):
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": [t.adam_beta1, t.adam_beta2],
                "eps": t.adam_eps,
                "weight_decay": t.weight_decay,
            },
        }
    return ds


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms (1-D parameters), as in Megatron and the reference recipes."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() == 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(cfg: ExperimentConfig, model: torch.nn.Module, ctx: ParallelContext):
    import deepspeed

    if ctx.device.type == "cpu":  # also when the process group was made outside init_distributed
        without_shm_allreduce(deepspeed)
    t = cfg.train
    ds_config = deepspeed_config(cfg, ctx)
    groups = parameter_groups(model, t.weight_decay)
    optimizer = None
    if uses_deepspeed_cpu_adam(cfg, ctx):
        wait_for_build_lock(CPU_ADAM_OP)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps
        )

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(t))

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        mpu=MegatronMPU(),
    )
    return engine
