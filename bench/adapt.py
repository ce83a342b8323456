"""AR-to-MDM adaptation (docs/design.md §13.6): an MDM initialised from a causal LM we trained
against an MDM of the same size from scratch, held-out loss at equal steps.

    python bench/adapt.py [--seeds 1 2] [--arm-steps 200] [--mdm-steps 150] [--eval-interval 25]
        [--eval-iters 4] [--anneal-steps 50] [--workdir DIR] [--out FILE.json]

Per seed, every run is a real `mdm train` on the built-in synthetic corpus (byte tokenizer), one
process, CPU, a 2-layer model (hidden 64, 2 heads, FFN 256, sequence 64, 16 sequences a step):
1. `arm`: the base causal LM, `model.objective=arm`, `--arm-steps` steps (quickstart schedule);
2. `scratch`: `model.objective=mdm` from random init, `--arm-steps + --mdm-steps` steps;
3. `adapt`: `train.init_from=<the ARM checkpoint> diffusion.shift=true`, `--mdm-steps` steps;
4. `adapt+anneal`: the same with `diffusion.attention_anneal_steps=--anneal-steps`;
5. `adapt-noshift`: init from the ARM without the shift (ablation: is the reused head the point?).
The MDM runs share one constant learning rate after a 10-step warmup, so the first
`--mdm-steps` of `scratch` are exactly a `--mdm-steps` run from scratch: it gives both the
equal-MDM-steps comparison and the equal-total-tokens one (ARM tokens + adaptation tokens).
The held-out figure is the validation loss (`train.eval_interval`): the SMDM loss with fixed
masks on the held-out split, an upper bound on the per-token NLL (the ELBO, §3), in nats.
CPU: a few minutes per seed on 2 cores; report the gaps, not wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_mdm.utils import atomic_write_json  # noqa: E402

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=2",
    "model.ffn_hidden_size=256",
    "model.seq_length=64",
    "train.micro_batch_size=16",
    "train.global_batch_size=16",
    "logging.progress=false",
    "logging.tensorboard=false",
]
MDM_SCHEDULE = ["train.lr_schedule=constant", "train.warmup_steps=10", "train.lr=2e-3"]


def train(out: Path, overrides: list[str]) -> list[dict]:
    """`mdm train` into `out` (skipped when a finished run is there); its metrics records."""
    metrics = out / "metrics.jsonl"
    if not (out / "done").exists():
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        cmd = [sys.executable, "-m", "megatron_mdm.cli", "train", QUICKSTART, *MODEL, *overrides]
        cmd += [f"train.output_dir={out}", "checkpoint.resume=none"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        (out / "done").write_text("")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def val_curve(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def run_seed(args, seed: int, work: Path) -> dict:
    common = [f"train.seed={seed}", "logging.interval=25"]
    evals = [f"train.eval_interval={args.eval_interval}", f"train.eval_iters={args.eval_iters}"]
    train(work / "arm", [*common, "model.objective=arm", f"train.max_steps={args.arm_steps}"])
    arm_ckpt = f"train.init_from={work / 'arm' / 'checkpoints'}"
    total = args.arm_steps + args.mdm_steps
    mdm = [*common, *evals, *MDM_SCHEDULE, "model.objective=mdm"]
    runs = {
        "scratch": [*mdm, f"train.max_steps={total}"],
        "adapt": [*mdm, arm_ckpt, "diffusion.shift=true", f"train.max_steps={args.mdm_steps}"],
        "adapt+anneal": [
            *mdm,
            arm_ckpt,
            "diffusion.shift=true",
            f"diffusion.attention_anneal_steps={args.anneal_steps}",
            f"train.max_steps={args.mdm_steps}",
        ],
        "adapt-noshift": [*mdm, arm_ckpt, f"train.max_steps={args.mdm_steps}"],
    }
    curves = {name: val_curve(train(work / name, o)) for name, o in runs.items()}
    print(f"seed {seed}: " + ", ".join(f"{k} {v[args.mdm_steps]:.4f}" for k, v in curves.items()
                                         if args.mdm_steps in v), flush=True)  # fmt: skip
    return curves


def summarize(per_seed: dict[int, dict], args) -> dict:
    """Mean and spread over seeds of the held-out loss at the adaptation's last step (and of
    scratch after the ARM's steps too: equal total tokens)."""
    s = args.mdm_steps
    rows = {}
    for name in ("scratch", "adapt", "adapt+anneal", "adapt-noshift"):
        values = [c[name][s] for c in per_seed.values()]
        rows[name] = values
    rows["scratch@total"] = [c["scratch"][s + args.arm_steps] for c in per_seed.values()]
    out = {}
    for name, values in rows.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = {"values": values, "mean": statistics.fmean(values), "std": spread}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--arm-steps", type=int, default=200)
    parser.add_argument("--mdm-steps", type=int, default=150)
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--eval-iters", type=int, default=4)
    parser.add_argument("--anneal-steps", type=int, default=50)
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a tmp dir)")
    parser.add_argument("--out", default=None, help="write the report as JSON")
    args = parser.parse_args()
    if args.mdm_steps % args.eval_interval or args.arm_steps % args.eval_interval:
        parser.error("--arm-steps and --mdm-steps must be multiples of --eval-interval")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        per_seed = {seed: run_seed(args, seed, work / f"seed{seed}") for seed in args.seeds}
    report = {
        "args": vars(args),
        "curves": {str(k): v for k, v in per_seed.items()},
        "at_mdm_steps": summarize(per_seed, args),
    }
    for name, row in report["at_mdm_steps"].items():
        print(f"{name:14s} {row['mean']:.4f} +- {row['std']:.4f}  {row['values']}")
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
