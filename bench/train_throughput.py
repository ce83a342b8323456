"""Training throughput: tokens/s, TFLOP/s, MFU and peak memory, MDM vs ARM and FP8 vs bf16.

Each variant is a real `mdm train` run (same config, same data) with the given overrides; the
figures are the mean over the logged steps after `--warmup` steps. MFU counts attention FLOPs
for full L x L attention for both objectives (`model/accounting.py`), so the ratio compares like for
like. On CPU use a tiny config and read the ratios only; on a GPU the absolute numbers count.

`--precisions bf16,fp8` adds the FP8/bf16 throughput ratio per objective: FP8 through the local
spec's `kernels/` layers, or Transformer Engine with `model.transformer_impl=transformer_engine`.
`--smoke` shrinks the model (2 layers, hidden 64, seq 64, batch 4) so that every precision
finishes on a CPU, where torch._scaled_mm is a slow reference kernel.

    python bench/train_throughput.py CONFIG [--steps 20] [--warmup 5] [--precisions fp32]
        [--objectives mdm,arm] [--nproc 1] [--smoke] [--] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Feature sizes are multiples of 16 so that precision=fp8 (torch._scaled_mm) accepts them.
SMOKE = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.seq_length=64",
    "train.micro_batch_size=4",
    "train.global_batch_size=4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(config, overrides, steps, nproc, out: Path) -> list[dict]:
    args = [
        "train",
        config,
        *overrides,
        f"train.max_steps={steps}",
        "train.warmup_steps=0",
        "logging.interval=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "checkpoint.resume=none",
        "checkpoint.save_at_end=false",
        "checkpoint.save_interval=0",
        "train.eval_interval=0",
        f"train.output_dir={out}",
    ]
    # A free rendezvous port: other jobs on the machine may hold the default 29500.
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", env["MASTER_PORT"]]
        cmd += ["-m", "megatron_mdm.cli", *args]
    else:
        cmd = [sys.executable, "-m", "megatron_mdm.cli", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"train_throughput: {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def summarize(records: list[dict], warmup: int) -> dict:
    steady = [r for r in records if r["step"] > warmup] or records
    mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
    return {
        "steps_measured": len(steady),
        "tokens_per_s": mean("tokens_per_s"),
        "tflops_per_device": mean("tflops_per_device"),
        # null without a known peak (CPU, unknown GPU: set logging.peak_tflops)
        "mfu": None if any(r["mfu"] is None for r in steady) else mean("mfu"),
        "peak_mem_gb": max(r["peak_mem_gb"] for r in steady),
        "final_loss": records[-1]["loss"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32,bf16,fp8")
    parser.add_argument("--objectives", default="mdm,arm")
    parser.add_argument("--smoke", action="store_true", help="tiny model: " + " ".join(SMOKE))
    args = parser.parse_args(argv)
    overrides = [*SMOKE, *args.overrides] if args.smoke else args.overrides
    precisions, objectives = args.precisions.split(","), args.objectives.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            for objective in objectives:
                name = f"{objective}-{precision}"
                print(f"running {name} ...", file=sys.stderr, flush=True)
                extra = [f"model.objective={objective}", f"train.precision={precision}"]
                records = run_variant(
                    args.config, [*overrides, *extra], args.steps, args.nproc, Path(tmp) / name
                )
                results[name] = summarize(records, args.warmup)
    print(
        json.dumps(
            {
                "config": args.config,
                "overrides": overrides,
                "results": results,
                "ratios": ratios(results, precisions, objectives),
            },
            indent=2,
        )
    )


def ratios(results: dict, precisions: list[str], objectives: list[str]) -> dict:
    """MDM/ARM step-time ratio per precision; FP8/bf16 throughput ratio per objective."""
    out = {}
    for precision in precisions:
        mdm, arm = results.get(f"mdm-{precision}"), results.get(f"arm-{precision}")
        if mdm and arm:
            out[f"mdm_over_arm_step_time_{precision}"] = arm["tokens_per_s"] / mdm["tokens_per_s"]
    for objective in objectives:
        fp8, bf16 = results.get(f"{objective}-fp8"), results.get(f"{objective}-bf16")
        if fp8 and bf16:
            out[f"fp8_over_bf16_tokens_per_s_{objective}"] = (
                fp8["tokens_per_s"] / bf16["tokens_per_s"]
            )
    return out


if __name__ == "__main__":
    main()
