"""Training throughput: tokens/s, TFLOP/s, MFU and peak memory, MDM vs ARM side by side.

Each variant is a real `mdm train` run (same config, same data) with the given overrides; the
figures are the mean over the logged steps after `--warmup` steps. MFU counts attention FLOPs
for full L x L attention for both objectives (`training/flops.py`), so the ratio compares like for
like. On CPU use a tiny config and read the ratios only; on a GPU the absolute numbers count.

    python bench/train_throughput.py CONFIG [--steps 20] [--warmup 5] [--precisions fp32]
        [--nproc 1] [--] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["-m", "megatron_mdm.cli", *args]
    else:
        cmd = [sys.executable, "-m", "megatron_mdm.cli", *args]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def summarize(records: list[dict], warmup: int) -> dict:
    steady = [r for r in records if r["step"] > warmup] or records
    mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
    return {
        "steps_measured": len(steady),
        "tokens_per_s": mean("tokens_per_s"),
        "tflops_per_device": mean("tflops_per_device"),
        "mfu": mean("mfu"),
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
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            for objective in args.objectives.split(","):
                name = f"{objective}-{precision}"
                extra = [f"model.objective={objective}", f"train.precision={precision}"]
                records = run_variant(
                    args.config, [*args.overrides, *extra], args.steps, args.nproc, Path(tmp) / name
                )
                results[name] = summarize(records, args.warmup)
    ratios = {}
    for precision in args.precisions.split(","):
        mdm, arm = results.get(f"mdm-{precision}"), results.get(f"arm-{precision}")
        if mdm and arm:
            ratios[f"mdm_over_arm_step_time_{precision}"] = (
                arm["tokens_per_s"] / mdm["tokens_per_s"]
            )
    if "mdm-fp8" in results and "mdm-bf16" in results:
        ratios["fp8_over_bf16_tokens_per_s"] = (
            results["mdm-fp8"]["tokens_per_s"] / results["mdm-bf16"]["tokens_per_s"]
        )
    print(
        json.dumps(
            {
                "config": args.config,
                "overrides": args.overrides,
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
