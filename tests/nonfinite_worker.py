"""Run by tests/test_nonfinite.py under torchrun (2 ranks, gloo): one non-finite step per ZeRO
stage and pipeline layout, through the real training step and DeepSpeed engine.

For each case: build the run (Trainer: data, model, engine), take one normal step, snapshot the
weights and the optimizer's whole state (Adam moments, step counts, ZeRO's fp32 partitions), then
take a step whose loss is genuinely not finite, then a normal step. The non-finite loss is real:
one sample of one micro-batch (on data-parallel rank 0 only, so that the ranks must agree) gets
the masking probability p = 0, which the SMDM loss divides by (the eps floor normally prevents
it); the loss is NaN and so are its gradients. Writes what it saw to OUT/<case>-rank<r>.json.

    python -m torch.distributed.run --nproc_per_node 2 tests/nonfinite_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from helpers import QUICKSTART, TINY_MODEL
from megatron.core import parallel_state as ps

from megatron_mdm.config import load_config
from megatron_mdm.parallel.distributed import init_distributed, shutdown
from megatron_mdm.training.loop import Trainer
from megatron_mdm.training.schedule import lr_at
from megatron_mdm.training.step import train_step

CASES = {
    "zero0_dp2": ["parallel.zero_stage=0"],
    "zero1_dp2": ["parallel.zero_stage=1"],
    "zero2_dp2": ["parallel.zero_stage=2"],
    "zero3_dp2": ["parallel.zero_stage=3"],
    "pp2_zero0": ["parallel.pipeline=2", "parallel.zero_stage=0"],
    "pp2_zero1": ["parallel.pipeline=2", "parallel.zero_stage=1"],
    "zero2_offload_dp2": ["parallel.zero_stage=2", "parallel.offload_optimizer=true"],
    "bf16_zero0_dp2": ["parallel.zero_stage=0", "train.precision=bf16"],
    "bf16_zero1_dp2": ["parallel.zero_stage=1", "train.precision=bf16"],
}


def tensors(obj, prefix=""):
    """Every tensor (and plain value) in a nested state, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj.detach().clone()
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            yield from tensors(item, f"{prefix}/{i}")
    elif isinstance(obj, int | float | bool | str) or obj is None:
        yield prefix, obj


def snapshot(engine) -> dict:
    weights = {
        f"weight/{name}": getattr(p, "ds_tensor", p).detach().clone()
        for name, p in engine.module.named_parameters()
    }
    return {**weights, **dict(tensors(engine.optimizer.state_dict(), "optimizer"))}


def differences(a: dict, b: dict) -> list[str]:
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    out = []
    for key in a:
        x, y = a[key], b[key]
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            out.append(key)
    return out


def poison(micro_batches):
    """Masking probability 0 for the first sample of the first micro-batch."""
    mb = micro_batches[0]
    p_mask = mb.p_mask.clone()
    p_mask[0] = 0.0
    micro_batches[0] = type(mb)(mb.inputs, mb.targets, mb.masked, p_mask)
    return micro_batches


def run_case(name: str, overrides: list[str], out: Path) -> None:
    cfg = load_config(
        QUICKSTART,
        [
            *TINY_MODEL,
            "train.micro_batch_size=2",
            "train.global_batch_size=8",
            "train.warmup_steps=0",
            "train.max_steps=10",
            "diffusion.var_len_prob=0",
            "logging.tensorboard=false",
            "checkpoint.resume=none",
            f"train.output_dir={out / 'run'}",
            *overrides,
        ],
    )
    ctx = init_distributed(cfg)
    trainer = Trainer(cfg, ctx)
    engine, seen = trainer.engine, {"case": name, "rank": ctx.rank}

    def step(s: int, poisoned: bool) -> dict:
        batches = trainer.batches.train(s)
        if poisoned and (ctx.dp_rank == 0 or ctx.pp_size > 1):
            batches = poison(batches)
        local = [float(mb.p_mask.min()) for mb in batches]
        result = train_step(cfg, ctx, engine, batches, trainer.loss_fn)
        return {**result, "local_min_p": min(local)}

    seen["step0"] = step(0, poisoned=False)
    before = snapshot(engine)
    seen["step1"] = step(1, poisoned=True)
    seen["changed_by_skipped_step"] = differences(before, snapshot(engine))
    seen["lr_after_skip"] = engine.get_lr()[0]
    seen["lr_expected"] = lr_at(2, cfg.train)
    seen["step2"] = step(2, poisoned=False)
    seen["changed_by_next_step"] = len(differences(before, snapshot(engine)))
    seen["state_entries"] = len(before)
    path = out / f"{name}-rank{ctx.rank}.json"
    path.write_text(json.dumps(seen, default=str))
    ps.destroy_model_parallel()  # the next case sets up its own layout


def main() -> None:
    out = Path(sys.argv[1])
    only = sys.argv[2:]
    try:
        for name, overrides in CASES.items():
            if only and name not in only:
                continue
            run_case(name, overrides, out)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
