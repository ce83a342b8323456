"""Block diffusion speed (docs/design.md §11): `--sampler block` vs `fast --cache dual` vs
`llada` vs `arm`, and a training step of `objective=block` vs `mdm`, at one model size.

    python bench/block.py [--gen-length 128] [--prompt-length 32] [--block-size 16]
        [--prompts 4] [--repeats 3] [--train-steps 5] [--threads 1] [--ckpt DIR] [--out FILE.json]

Sampling: every sampler runs the same weights (the quickstart shape, 4.4M parameters, random
init from `train.seed`, or `--ckpt`'s) through the shipped plain-torch model under its own mask
(block-causal with the exact KV cache, bidirectional with Fast-dLLM's approximate dual cache,
bidirectional without cache, causal with the KV cache), batch 1, greedy, one token per step
(`steps = gen_length`, no confidence threshold: every sampler does the same number of reveal
steps, so the ratios measure the cost per step, not a model's confidence), exactly
`gen_length` tokens (no EOS stop). Reported: tokens/s, speed vs `llada`, model calls and
positions run per generated token. With `--ckpt` (a trained block model) the `block t=0.9` row
adds threshold decoding, whose speed then depends on what the model learned.

Training: one forward + backward of a micro-batch (`--micro-batch` x `--seq-length`) through
megatron-core on one process, `objective=block` (the 2L sequence [x_t; x_0], dense boolean mask
through SDPA on CPU) against `objective=mdm` at the same L, fastest of `--train-steps`.

GPU (`--gpu`, needs CUDA): attention time of flex_attention with a BlockMask vs SDPA with the
dense boolean mask on the block-diffusion mask at L = 2048, B = 32 (2L = 4096 positions).
Unmeasured so far (no GPU was available when this was written; docs/benchmarks.md).
On CPU report ratios, not absolute figures (shared cores, no accelerator).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_mdm.utils import atomic_write_json  # noqa: E402

SHAPE = [  # the quickstart model (configs/quickstart.yaml)
    "model.num_layers=4",
    "model.hidden_size=256",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=1024",
]


def torch_models(args) -> dict:
    """objective -> the shipped MDMForMaskedLM holding the same weights under that mask."""
    from megatron_mdm.config import load_config
    from megatron_mdm.convert import layouts
    from megatron_mdm.convert.hf_modeling.configuration_mdm import MDMConfig
    from megatron_mdm.convert.hf_modeling.modeling_mdm import MDMForMaskedLM
    from megatron_mdm.model.vocab import VocabLayout

    if args.ckpt:
        from megatron_mdm.inference.loading import from_training_checkpoint_torch

        base = from_training_checkpoint_torch(args.ckpt).cached_model
        config, weights = base.config.to_dict(), base.state_dict()
    else:
        cfg = load_config(None, [*SHAPE, f"model.seq_length={args.seq_length}"])
        vocab = VocabLayout.build(259, None, 128, 1)
        shape = layouts.ModelShape.from_config(cfg.model, vocab)
        config = layouts.hf_config(shape, layouts.config_meta(cfg, vocab, eos_token_id=1))
        config["max_position_embeddings"] = max(4096, args.seq_length)
        torch.manual_seed(0)
        weights = MDMForMaskedLM(MDMConfig(**config)).state_dict()
    models = {}
    for objective in ("block", "mdm", "arm"):
        c = dict(config, objective=objective, block_size=args.block_size)
        model = MDMForMaskedLM(MDMConfig(**c)).eval()
        model.load_state_dict(weights)
        models[objective] = model
    return models


def samplers(models, args) -> dict:
    """name -> fn(prompt [1, P], stats) -> ids."""
    from megatron_mdm.diffusion.arm_sampling import arm_sample_kv
    from megatron_mdm.diffusion.block_sampling import block_diffusion_sample
    from megatron_mdm.diffusion.fast_sampling import fast_sample
    from megatron_mdm.diffusion.sampling import llada_sample

    n, b, mask = args.gen_length, args.block_size, models["mdm"].config.mask_token_id

    def fn(model):
        return lambda x: model(input_ids=x).logits

    table = {
        "block (exact KV cache)": lambda p, s: block_diffusion_sample(
            p, mask, b, n, n, cached_model=models["block"], stats=s
        ),
        "fast --cache dual": lambda p, s: fast_sample(
            None, p, mask, n, n, b, cache="dual", cached_model=models["mdm"], stats=s
        ),
        "llada": lambda p, s: llada_sample(fn(models["mdm"]), p, mask, n, n, b, stats=s),
        "arm (KV cache)": lambda p, s: arm_sample_kv(models["arm"], p, n, stats=s),
    }
    if args.ckpt:
        table["block t=0.9"] = lambda p, s: block_diffusion_sample(
            p, mask, b, n, n, threshold=0.9, cached_model=models["block"], stats=s
        )
    return table


def time_sampling(args) -> dict:
    models = torch_models(args)
    table = samplers(models, args)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (1, args.prompt_length), generator=gen) for _ in range(4)]
    prompts = prompts[: args.prompts]
    for sample in table.values():
        sample(prompts[0], {})  # warm-up
    seconds = {name: [float("inf")] * len(prompts) for name in table}
    calls = {name: [0] * len(prompts) for name in table}
    positions = {name: [0] * len(prompts) for name in table}
    with torch.no_grad():
        for _ in range(args.repeats):
            for i, prompt in enumerate(prompts):
                for name, sample in table.items():  # interleaved: shared load hits all alike
                    stats = {}
                    start = time.perf_counter()
                    sample(prompt, stats)
                    seconds[name][i] = min(seconds[name][i], time.perf_counter() - start)
                    print(f"{name}: prompt {i}, {seconds[name][i]:.2f} s", file=sys.stderr)
                    calls[name][i], positions[name][i] = (
                        stats["model_calls"],
                        stats.get("positions", 0),
                    )
    total = len(prompts) * args.gen_length
    rows = {
        name: {
            "tokens_per_s": total / sum(seconds[name]),
            "calls_per_token": sum(calls[name]) / total,
            "positions_per_token": sum(positions[name]) / total or None,
        }
        for name in table
    }
    base = rows["llada"]["tokens_per_s"]
    for row in rows.values():
        row["speedup_vs_llada"] = row["tokens_per_s"] / base
    return rows


def time_training(args) -> dict:
    """Seconds of one forward + backward (fastest of --train-steps), block vs mdm."""
    from megatron_mdm.config import load_config
    from megatron_mdm.data.batches import build_micro_batch
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout
    from megatron_mdm.parallel.distributed import init_distributed
    from megatron_mdm.training.objective import loss_for

    class Tokens:
        def sample(self, i):
            gen = torch.Generator().manual_seed(i)
            return torch.randint(0, 256, (args.seq_length + 1,), generator=gen).numpy()

    common = [
        *SHAPE,
        f"model.seq_length={args.seq_length}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.global_batch_size={args.micro_batch}",
        "diffusion.var_len_prob=0",
    ]
    vocab = VocabLayout.build(259, None, 128, 1)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    out = {}
    for objective in ("mdm", "block"):
        extra = ["model.objective=block", f"diffusion.block_size={args.block_size}"]
        cfg = load_config(None, [*common, *(extra if objective == "block" else [])])
        ctx = init_distributed(cfg)
        model = build_model(cfg, vocab, ctx.on_gpu).to(ctx.device)
        loss_fn = loss_for(cfg, "pretrain")
        best = float("inf")
        for step in range(args.train_steps):
            mb = build_micro_batch(cfg, Tokens(), vocab.mask_id, step, 0, list(range(4)))
            mb = mb.to(ctx.device)
            start = time.perf_counter()
            loss_fn(model(mb.inputs, **mb.model_kwargs()), mb).backward()
            best = min(best, time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        out[objective] = best
    return {"seconds": out, "block_over_mdm": out["block"] / out["mdm"]}


def time_gpu_attention(length: int = 2048, block: int = 32, repeats: int = 20) -> dict:
    """flex_attention (BlockMask) vs SDPA (dense mask) on the training mask, bf16, on CUDA."""
    from megatron_mdm.model.attention_masks import block_diffusion_mask
    from megatron_mdm.model.sdpa_attention import masked_attention

    device = torch.device("cuda")
    q, k, v = (
        torch.randn(1, 32, 2 * length, 128, device=device, dtype=torch.bfloat16) for _ in range(3)
    )
    mask = block_diffusion_mask(length, block, device)
    out = {}
    for backend in ("sdpa", "flex"):
        masked_attention(q, k, v, mask, 0.088, backend)  # build / compile once
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            masked_attention(q, k, v, mask, 0.088, backend)
        torch.cuda.synchronize()
        out[backend] = (time.perf_counter() - start) / repeats
    return {"seconds": out, "flex_speedup": out["sdpa"] / out["flex"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a trained block-diffusion checkpoint (default: random)")
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-length", type=int, default=256, help="training step length L")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPUs)")
    parser.add_argument("--gpu", action="store_true", help="also time flex vs SDPA (CUDA)")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "sampling": time_sampling(args),
        "training": time_training(args),
        "gpu_attention": time_gpu_attention() if args.gpu else "unmeasured",
    }
    print(json.dumps(report, indent=2))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
