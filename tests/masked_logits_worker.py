"""Run by tests/test_masked_logits_parallel.py under torchrun (2 ranks, gloo): model.logits=masked
(with and without model.ce_chunk_tokens) against model.logits=all in parallel layouts, fp32.

- `tp2`, `pp2`: one run (Trainer: data, model, engine); for each mode the same micro-batches go
  through forward and backward (PP: megatron-core's 1F1B schedule, as a training step does), and
  the loss and every local parameter gradient are recorded; pretraining and SFT micro-batches.
- `zero3_dp2`: ZeRO-3 (parameters partitioned, gathered by DeepSpeed's module hooks); a fresh run
  per mode (all; masked + chunks) takes two real training steps; their losses and gradient norms are recorded (the
  second step's loss depends on every gradient of the first).

Writes OUT/<case>-rank<r>.json.

    python -m torch.distributed.run --nproc_per_node 2 tests/masked_logits_worker.py OUT [CASE..]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from helpers import QUICKSTART, TINY_MODEL
from megatron.core import parallel_state as ps

from megatron_mdm.config import load_config
from megatron_mdm.data.sft import SFTExample, build_sft_micro_batch
from megatron_mdm.parallel.distributed import init_distributed, shutdown
from megatron_mdm.training.loop import Trainer
from megatron_mdm.training.objective import loss_for
from megatron_mdm.training.step import _pipeline_losses, train_step

MODES = {"all": ("all", 0), "masked": ("masked", 0), "masked_chunk3": ("masked", 3)}
CASES = {
    "tp2": ["parallel.tensor=2"],
    "pp2": ["parallel.pipeline=2"],
    "zero3_dp2": ["parallel.zero_stage=3"],
}


def config(overrides, out: Path, mode=("all", 0)):
    logits, chunk = mode
    return load_config(
        QUICKSTART,
        [
            *TINY_MODEL,
            "train.micro_batch_size=2",
            "train.global_batch_size=4",
            "train.warmup_steps=0",
            "train.max_steps=10",
            "diffusion.var_len_prob=0",
            "logging.tensorboard=false",
            "checkpoint.resume=none",
            f"train.output_dir={out / 'run'}",
            f"model.logits={logits}",
            f"model.ce_chunk_tokens={chunk}",
            *overrides,
        ],
    )


def sft_micro_batches(vocab, n: int, seq: int):
    gen = torch.Generator().manual_seed(11)

    def ids(k):
        return torch.randint(0, vocab.tokenizer_size, (k,), generator=gen).tolist()

    out = []
    for m in range(n):
        examples = [SFTExample(ids(3 + m), ids(5)), SFTExample(ids(6), ids(2 + m))]
        out.append(build_sft_micro_batch(examples, seq, "max", 0, vocab.mask_id, 1, 2, [m, m]))
    return out


def loss_and_grads(cfg, ctx, engine, micro_batches, kind) -> tuple[float, dict]:
    module = engine.module
    module.zero_grad(set_to_none=True)
    loss_fn = loss_for(cfg, kind)
    module.ce_chunk_tokens = cfg.model.ce_chunk_tokens
    if ctx.pp_size > 1:
        loss = float(_pipeline_losses(ctx, engine, micro_batches, loss_fn, forward_only=False))
    else:
        losses = []
        for mb in micro_batches:
            out = module(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))
            value = loss_fn(out, mb) / len(micro_batches)
            value.backward()
            losses.append(float(value))
        loss = sum(losses)
    return loss, {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def compare_gradients(name, overrides, out: Path) -> dict:
    cfg = config(overrides, out)
    ctx = init_distributed(cfg)
    trainer = Trainer(cfg, ctx)
    seen: dict = {"case": name, "rank": ctx.rank}
    batches = {
        "pretrain": trainer.batches.train(0),
        "sft": sft_micro_batches(trainer.vocab, 2, cfg.model.seq_length),
    }
    for kind, mbs in batches.items():
        ref_loss, ref = loss_and_grads(cfg, ctx, trainer.engine, mbs, kind)
        for mode, (logits, chunk) in MODES.items():
            mcfg = dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, logits=logits, ce_chunk_tokens=chunk)
            )
            loss, grads = loss_and_grads(mcfg, ctx, trainer.engine, mbs, kind)
            errors = {
                n: float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
                for n, g in ref.items()
            }
            seen[f"{kind}/{mode}"] = {
                "loss": loss,
                "ref_loss": ref_loss,
                "max_grad_rel_err": max(errors.values()),
                "worst": max(errors, key=errors.__getitem__),
                "params": len(errors),
                "nonzero_grads": sum(int(g.abs().max() > 0) for g in ref.values()),
            }
    ps.destroy_model_parallel()
    return seen


def compare_steps(name, overrides, out: Path) -> dict:
    seen: dict = {"case": name}
    for mode in ("all", "masked_chunk3"):
        cfg = config(overrides, out / mode, MODES[mode])
        ctx = init_distributed(cfg)
        seen["rank"] = ctx.rank
        trainer = Trainer(cfg, ctx)
        seen[mode] = [
            train_step(cfg, ctx, trainer.engine, trainer.batches.train(s), trainer.loss_fn)
            for s in range(2)
        ]
        ps.destroy_model_parallel()
    return seen


def main() -> None:
    out = Path(sys.argv[1])
    only = sys.argv[2:]
    try:
        for name, overrides in CASES.items():
            if only and name not in only:
                continue
            run = compare_steps if name.startswith("zero") else compare_gradients
            seen = run(name, overrides, out)
            (out / f"{name}-rank{seen['rank']}.json").write_text(json.dumps(seen))
    finally:
        shutdown()


if __name__ == "__main__":
    main()
