"""IsoFLOP scaling laws for MDM vs ARM: plan, run, collect, fit.

    python tools/scaling_law.py sweep --budgets 1e11 3e11 1e12 --out runs/isoflop \\
        [--sizes 1x32x2,2x64x4,... | --family smdm --sizes 6M,19M,34M] [--objectives mdm,arm] \\
        [--seq-length 128] [--global-batch 16] [--override data.text_file=... ...] \\
        [--rounds 3 [--ladder 1x8x1,...] [--extend-by 2]]   # train + bracket the minima here
    python tools/scaling_law.py run runs/isoflop [--slurm]   # locally, or a Slurm array script
    python tools/scaling_law.py collect runs/isoflop -o RESULTS.csv
    python tools/scaling_law.py fit RESULTS.csv [--plot OUT.png]

`fit` prints a summary, then as its last line one JSON object
{"mdm": {"a": .., "alpha": .., "size_exponent": .., "alpha_ci": [lo, hi],
"size_exponent_ci": [..]}, "arm": {...}, "compute_multiple": .., "compute_multiple_ci": [..],
"bootstrap": {...}} (see megatron_mdm/scaling/fit.py and bootstrap.py for the definitions;
`--bootstrap 0` leaves the intervals out). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _checkout, also under -P / -I
from _checkout import use_checkout  # noqa: E402

use_checkout()  # this checkout's megatron_mdm (and its kernels/), installed or not

from megatron_mdm.config import ConfigError  # noqa: E402
from megatron_mdm.scaling.errors import ScalingLawError  # noqa: E402
from megatron_mdm.utils import atomic_write_text  # noqa: E402

PROG = "scaling_law.py"


def _csv_list(values: list[str]) -> list[str]:
    """`a,b c` -> [a, b, c]: lists given either way."""
    return [v for value in values for v in value.split(",") if v.strip()]


def _budgets(values: list[str]) -> list[float]:
    out = []
    for v in _csv_list(values):
        try:
            out.append(float(v))
        except ValueError:
            raise ScalingLawError(f"--budgets: {v!r} is not a number") from None
    return out


def _ladder(args, sizes: list[str]) -> list[str]:
    """The sizes --rounds may add: --ladder, else the family's table (TINY_LADDER, or the SMDM
    family when --family smdm or any size is a member), plus the sweep's own sizes."""
    from megatron_mdm.scaling.sweep import TINY_LADDER, parse_size

    if args.ladder:
        return _csv_list(args.ladder) + sizes
    if args.family == "smdm" or any(parse_size(s).smdm_member for s in sizes):
        from megatron_mdm.model.families import FAMILY

        return list(FAMILY) + sizes
    return list(TINY_LADDER) + sizes


def cmd_sweep(args) -> int:
    from megatron_mdm.scaling.sweep import TINY_FAMILY, SweepSpec, write_sweep

    if args.sizes:
        sizes = _csv_list(args.sizes)
    elif args.family == "smdm":
        from megatron_mdm.model.families import FAMILY

        sizes = list(FAMILY)
    else:
        sizes = list(TINY_FAMILY)
    if args.rounds < 0 or args.extend_by < 1:
        raise ScalingLawError(
            f"--rounds must be >= 0 and --extend-by >= 1, got {args.rounds} and {args.extend_by}"
        )
    spec = SweepSpec(
        budgets=_budgets(args.budgets),
        out_dir=args.out,
        objectives=_csv_list(args.objectives),
        sizes=sizes,
        seq_length=args.seq_length,
        global_batch_size=args.global_batch,
        micro_batch_size=args.micro_batch,
        base_config=args.base,
        overrides=args.override,
        eval_iters=args.eval_iters,
        warmup_fraction=args.warmup_fraction,
        tolerance=args.tolerance,
        min_steps=args.min_steps,
        tokens_per_param=tuple(args.tokens_per_param) if args.tokens_per_param else None,
    )
    if args.rounds:
        return _sweep_rounds(args, spec, _ladder(args, sizes))
    manifest = write_sweep(spec)
    print(f"{'run':<28} {'params':>12} {'steps':>8} {'tokens':>12} {'6ND/C - 1':>10}")
    for r in manifest.runs:
        print(
            f"{r.name:<28} {r.params:>12,} {r.steps:>8,} {r.tokens:>12,} "
            f"{r.flops / r.budget - 1:>+10.2%}"
        )
    for s in manifest.skipped:
        print(f"skipped {s['objective']} {s['size']} at C={s['budget']:.3g}: {s['reason']}")
    print(f"wrote {len(manifest.runs)} configs and {manifest.path}")
    return 0


def _sweep_rounds(args, spec, ladder: list[str]) -> int:
    import signal

    from tqdm import tqdm

    from megatron_mdm.scaling.rounds import run_rounds

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # see cmd_run
    report = run_rounds(
        spec,
        args.rounds,
        ladder,
        extend_by=args.extend_by,
        progress=not args.no_progress,
        echo=tqdm.write,
    )
    failed = sorted({o.run.name for o in report.outcomes if o.status == "failed"})
    edges = report.on_edge
    print(
        f"{report.rounds} round(s), {len(report.manifest.runs)} runs in "
        f"{report.manifest.path}; {len(report.decisions) - len(edges)} of "
        f"{len(report.decisions)} IsoFLOP minima inside their sizes"
    )
    for d in edges:
        print(
            f"on the edge: {d.objective} C={d.budget:.3g} ({d.direction}"
            f"{': ladder exhausted' if d.status == 'edge' else ': out of rounds'})"
        )
    for name in failed:
        print(f"failed: {name}", file=sys.stderr)
    return 1 if failed else 0


def cmd_run(args) -> int:
    from megatron_mdm.scaling.sweep import load_manifest

    manifest = load_manifest(args.manifest)
    if args.slurm:
        from megatron_mdm.scaling.slurm_array import SlurmOptions, array_script

        opts = SlurmOptions(
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            time=args.time,
            max_parallel=args.max_parallel,
        )
        text = array_script(manifest, opts)
        script = Path(args.script or Path(manifest.path).with_name("isoflop_array.sbatch"))
        atomic_write_text(script, text)
        print(text, end="")
        print(f"# wrote {script}; submit: mkdir -p logs && sbatch {script}")
        return 0
    import signal

    from tqdm import tqdm

    from megatron_mdm.scaling.runner import run_local

    # `kill` of this process unwinds like Ctrl-C, so subprocess.run stops the training it waits
    # on instead of leaving it running as an orphan.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    outcomes = run_local(manifest, progress=not args.no_progress, echo=tqdm.write)
    failed = [o for o in outcomes if o.status == "failed"]
    ran = sum(o.status == "done" for o in outcomes)
    total = sum(o.seconds for o in outcomes)
    print(
        f"{ran} run(s) trained in {total:.0f} s, {len(outcomes) - ran - len(failed)} skipped "
        f"as finished, {len(failed)} failed"
    )
    for o in failed:
        print(f"failed: {o.run.name}: {o.log}", file=sys.stderr)
    return 1 if failed else 0


def cmd_collect(args) -> int:
    from megatron_mdm.scaling.results import collect, write_results
    from megatron_mdm.scaling.sweep import load_manifest

    manifest = load_manifest(args.manifest)
    rows, missing = collect(manifest)
    for name in missing:
        print(f"not finished (no final val_loss): {name}", file=sys.stderr)
    if not rows:
        raise ScalingLawError(f"{manifest.path}: no finished runs to collect")
    out = args.output or Path(manifest.path).with_name("results.csv")
    write_results(rows, out)
    print(f"wrote {len(rows)} rows to {out} ({len(missing)} run(s) unfinished)")
    return 0


def cmd_fit(args) -> int:
    from megatron_mdm.scaling.fit import fit_results, result_json, summary_lines
    from megatron_mdm.scaling.results import read_results

    fit = fit_results(read_results(args.results))
    lines, result = summary_lines(fit), result_json(fit)
    if args.bootstrap:
        from megatron_mdm.scaling.bootstrap import bootstrap_fit, bootstrap_json, bootstrap_lines

        boot = bootstrap_fit(fit, replicates=args.bootstrap, seed=args.seed, level=args.level)
        lines += bootstrap_lines(fit, boot)
        for key, value in bootstrap_json(boot).items():
            if key in fit.objectives:
                result[key].update(value)
            else:
                result[key] = value
    for line in lines:
        print(line)
    if args.plot:
        from megatron_mdm.scaling.plot import plot_fit

        plot_fit(fit, args.plot, title=args.title)
        print(f"plot: {args.plot}")
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="write one config per (objective, size, budget) + manifest")
    p.add_argument("--budgets", nargs="+", required=True, help="compute budgets C in FLOPs")
    p.add_argument("--out", required=True, help="sweep directory (configs/, runs/, manifest)")
    p.add_argument("--objectives", nargs="+", default=["mdm,arm"], help="mdm and/or arm")
    p.add_argument(
        "--family",
        choices=("tiny", "smdm"),
        default="tiny",
        help="default sizes: the CPU family (LxDxH) or the whole SMDM table",
    )
    p.add_argument("--sizes", nargs="+", help="SMDM names (19M) and/or LAYERSxHIDDEN[xHEADS]")
    p.add_argument("--seq-length", type=int, help="default: the base config's")
    p.add_argument("--global-batch", type=int, help="sequences per step; default: the base's")
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--base", help="base YAML for LxD sizes (default configs/quickstart.yaml)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="applied to every run (repeatable)",
    )
    p.add_argument("--eval-iters", type=int, default=4, help="validation batches at the end")
    p.add_argument("--warmup-fraction", type=float, default=0.01)
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed |6ND/C - 1|")
    p.add_argument("--min-steps", type=int, default=10)
    p.add_argument(
        "--tokens-per-param",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="keep only runs with tokens/params in [LO, HI]: a size window per budget",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="train here too: up to N rounds of run + bracket the minima + add sizes "
        "(0: only write the configs)",
    )
    p.add_argument(
        "--ladder",
        nargs="+",
        help="sizes --rounds may add (default: the tiny ladder 1x6x1..4x128x8, or the SMDM family)",
    )
    p.add_argument(
        "--extend-by", type=int, default=2, help="sizes added per round past an edge minimum"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("run", help="train the unfinished runs here, or write a Slurm array")
    p.add_argument("manifest", help="sweep directory or its manifest.json")
    p.add_argument("--slurm", action="store_true", help="write + print an sbatch array script")
    p.add_argument("--script", help="where --slurm writes (default: next to the manifest)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=32)
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--max-parallel", type=int, help="array tasks running at once")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("collect", help="final val_loss of every finished run -> RESULTS.csv")
    p.add_argument("manifest", help="sweep directory or its manifest.json")
    p.add_argument("-o", "--output", help="default: results.csv next to the manifest")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("fit", help="IsoFLOP minima, L(C) = a*C^-alpha, compute multiple")
    p.add_argument("results", help="CSV with header objective,params,tokens,flops,loss")
    p.add_argument("--plot", metavar="OUT.png", help="write the IsoFLOP curves and fits")
    p.add_argument("--title", help="figure title")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="residual-bootstrap replicates for the confidence intervals (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.set_defaults(func=cmd_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ScalingLawError, ConfigError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
