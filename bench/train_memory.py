"""Training memory and time of the loss path (docs/design.md §14): `model.logits=all` vs `masked`
vs `masked` + `model.ce_chunk_tokens`, at LLaMA/SMDM's vocabulary (32,000) and LLaDA's (126,464).

    python bench/train_memory.py [--vocab 32000 126464] [--seq-length 1024] [--micro-batch 4]
        [--chunk 1024] [--hidden 64] [--steps 3] [--threads 2] [--out FILE.json]

One training forward + backward (no optimizer update) of a small megatron-core model (hidden
`--hidden`, 2 layers, so that the output layer and the cross-entropy dominate), fp32, one
process, masks drawn at rate 1/2 (an MDM masks half the tokens on average).

Peak memory, measured honestly per configuration in a fresh child process:
- CUDA: `torch.cuda.max_memory_allocated()` during the first step minus the allocation before it;
- CPU: the growth of the process's peak resident set size (`ru_maxrss`) during the first step,
  over its value once the model, the batch and the parameters' gradients exist (a throw-away
  step on a 2-token batch first allocates the gradients). The first step is the measured one
  because `ru_maxrss` is a high-water mark. Large tensors are mmap'ed by glibc and unmapped when
  freed, so the growth is the peak of live memory in the step plus allocator slack; it includes
  the transformer's activations, small next to the logits at this width.
Time: the median of `--steps` further steps. On a shared CPU report ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_mdm.utils import atomic_write_json  # noqa: E402

MODES = {"all": ("all", 0), "masked": ("masked", 0), "masked+chunk": ("masked", None)}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _world() -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def _micro_batch(cfg, vocab, device, batch: int, length: int):
    from megatron_mdm.data.batches import MicroBatch

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, vocab.tokenizer_size, (batch, length), generator=gen)
    masked = torch.rand(batch, length, generator=gen) < 0.5
    xt = torch.where(masked, torch.full_like(x0, vocab.mask_id), x0)
    return MicroBatch(xt, x0, masked, torch.full((batch,), 0.5)).to(device)


def one(args) -> dict:
    """Child process: one configuration (`--one VOCAB MODE`), printed as JSON."""
    from megatron_mdm.config import load_config
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout
    from megatron_mdm.parallel.distributed import init_distributed
    from megatron_mdm.training.objective import loss_for

    vocab_size, mode = int(args.one[0]), args.one[1]
    logits, chunk = MODES[mode]
    chunk = args.chunk if chunk is None else chunk
    heads = max(1, args.hidden // 32)
    cfg = load_config(
        None,
        [
            "model.num_layers=2",
            f"model.hidden_size={args.hidden}",
            f"model.num_attention_heads={heads}",
            f"model.ffn_hidden_size={4 * args.hidden}",
            f"model.seq_length={args.seq_length}",
            f"model.vocab_size={vocab_size}",
            f"model.logits={logits}",
            f"model.ce_chunk_tokens={chunk}",
            f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.micro_batch}",
        ],
    )
    _world()
    ctx = init_distributed(cfg)
    vocab = VocabLayout.build(vocab_size, None, cfg.model.make_vocab_size_divisible_by, 1)
    model = build_model(cfg, vocab, ctx.on_gpu).to(ctx.device)
    loss_fn = loss_for(cfg, "pretrain")
    cuda = ctx.device.type == "cuda"

    def step(mb) -> float:
        start = time.perf_counter()
        out = model(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))
        loss_fn(out, mb).backward()
        del out
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step(_micro_batch(cfg, vocab, ctx.device, 1, 2))  # allocates the parameters' gradients
    mb = _micro_batch(cfg, vocab, ctx.device, args.micro_batch, args.seq_length)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _maxrss_bytes()
    first = step(mb)
    peak = (torch.cuda.max_memory_allocated() if cuda else _maxrss_bytes()) - before
    times = [step(mb) for _ in range(args.steps)]
    return {
        "vocab": vocab_size,
        "mode": mode,
        "ce_chunk_tokens": chunk,
        "loss_rows": int(mb.masked.sum()),
        "positions": mb.masked.numel(),
        "peak_bytes": peak,
        "peak_measure": "cuda max_memory_allocated" if cuda else "ru_maxrss growth",
        "first_step_s": first,
        "step_s": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 126464])
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=1024, help="model.ce_chunk_tokens")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (shared CPUs)")
    parser.add_argument("--out", help="also write the report as JSON here")
    parser.add_argument("--one", nargs=2, metavar=("VOCAB", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for vocab in args.vocab:
        for mode in MODES:
            child = [sys.executable, __file__, *sys.argv[1:], "--one", str(vocab), mode]
            proc = subprocess.run(child, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise SystemExit(f"{vocab} {mode} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for row in rows:
        base = next(r for r in rows if r["vocab"] == row["vocab"] and r["mode"] == "all")
        row["peak_vs_all"] = base["peak_bytes"] / max(row["peak_bytes"], 1)
        row["time_vs_all"] = row["step_s"] / base["step_s"]
    report = {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    print(json.dumps(report, indent=2))
    for r in rows:
        print(
            f"vocab {r['vocab']:>7} {r['mode']:<13} peak {r['peak_bytes'] / 2**20:8.0f} MiB "
            f"({r['peak_vs_all']:.2f}x lower than all)  step {r['step_s']:.3f} s "
            f"({r['time_vs_all']:.2f}x all's time)"
        )
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
