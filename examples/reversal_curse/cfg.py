"""Classifier-free guidance on a held-out conditional task: the reversal-curse queries.

    python examples/reversal_curse/cfg.py [--quick | --smoke] [--out DIR] [--cfg 0 0.5 1 2]

Uses the MDM that `run.py` trained for the Berglund protocol and `--seed` in the same output
directory (`OUT/berglund/seed<N>/mdm`; pretrains and fine-tunes it, MDM only, when absent), then for every guidance weight w reports on the forward and reverse query sets:
- `acc`: exact-match accuracy of the LLaDA sampler's answer (as in run.py, with `cfg=w`);
- `nll`: minus the conditional ELBO of the true answer, nats per answer token, from
  `megatron_mdm.eval.likelihood` (LLaDA's Monte Carlo estimator, `--mc` stratified draws of the
  number of masked answer tokens); with w > 0 the guided logits
  uncond + (w + 1) * (cond - uncond) (uncond: prompt masked out, SMDM's unsupervised CFG) are
  scored, a ranking score rather than a normalised likelihood;
- `mc_acc`: multiple choice by that score: the true answer must score best among all the answers
  of the same subset and direction (chance = 1 / candidates).
w = 0 is the plain conditional model. The last line is a JSON object
{"cfg": [...], "forward_acc": [...], "reverse_acc": [...], "forward_nll": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reversal_eval  # noqa: E402
import run as reversal_run  # noqa: E402

from megatron_mdm.utils import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="classifier-free guidance on reversal queries")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None, help="run.py's output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--mc", type=int, default=8, help="Monte Carlo masks per likelihood")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.cfg):
        parser.error(f"--cfg weights must be >= 0, got {args.cfg}")
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = reversal_run.PRESETS[name]
    suffix = "" if name == "full" else f"-{name}"
    base = Path(args.out or reversal_run.ROOT / "runs" / f"reversal_curse{suffix}").resolve()
    out = base / "berglund" / f"seed{args.seed}"
    start = time.time()

    dataset = out / "dataset.json"
    if not (out / "mdm" / "checkpoints" / "latest").exists() or not dataset.exists():
        print(f"[cfg] no trained MDM in {out}: training one (run.py's {name} preset)", flush=True)
        reversal_run.run_berglund(preset, args.seed, out, "word", objectives=("mdm",))

    from megatron_mdm.inference.loading import from_training_checkpoint

    torch.set_grad_enabled(False)
    model = from_training_checkpoint(out / "mdm")
    if model.objective != "mdm":
        raise SystemExit(f"cfg.py: error: {out / 'mdm'} is not an MDM checkpoint")
    queries = reversal_eval.load_queries(dataset)
    rows = []
    for w in args.cfg:
        acc = reversal_eval.evaluate(model, queries, cfg=w)["accuracy"]
        lik = reversal_eval.likelihood_scores(model, queries, w, args.mc)
        rows.append({"cfg": w, "accuracy": acc, "likelihood": lik})

    print(
        f"{'cfg':>5s} | {'fwd acc':>8s} {'rev acc':>8s} | {'fwd nll':>8s} {'rev nll':>8s} | "
        f"{'fwd mc':>7s} {'rev mc':>7s}"
    )
    for r in rows:
        a, lk = r["accuracy"], r["likelihood"]
        print(
            f"{r['cfg']:5.2f} | {a['forward']:8.3f} {a['reverse']:8.3f} | "
            f"{lk['forward']['nll']:8.3f} {lk['reverse']['nll']:8.3f} | "
            f"{lk['forward']['mc_acc']:7.3f} {lk['reverse']['mc_acc']:7.3f}"
        )
    n_cand = rows[0]["likelihood"]["forward"]["mc_candidates"]
    print(f"(nll: nats per answer token, {args.mc} masks; mc: best of {n_cand} candidates)")
    summary = {"cfg": args.cfg}
    for d in ("forward", "reverse"):
        summary[f"{d}_acc"] = [r["accuracy"][d] for r in rows]
        summary[f"{d}_nll"] = [round(r["likelihood"][d]["nll"], 4) for r in rows]
        summary[f"{d}_mc_acc"] = [r["likelihood"][d]["mc_acc"] for r in rows]
    record = {"rows": rows, "summary": summary, "wall_s": time.time() - start}
    atomic_write_json(out / "cfg_results.json", record, indent=1)
    print(f"[cfg] wall time {time.time() - start:.1f} s; results in {out / 'cfg_results.json'}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
