"""Plan an IsoFLOP sweep: one training config per (objective, model size, compute budget), plus a
manifest listing them.

Compute is counted as SMDM and Chinchilla count it, C = 6 * N * D, with N the non-embedding
parameters (`model.accounting.non_embedding_params`, the count the SMDM family table is labelled
by) and D the training tokens, max_steps * global batch * sequence length. A run's
`train.max_steps` is the whole number of steps nearest to C / (6 * N * tokens per step); a
(size, budget) pair whose rounding misses C by more than the tolerance (5% by default) or leaves
fewer than `min_steps` steps is left out and listed in the manifest, never silently stretched.
`tokens_per_param` optionally keeps only pairs with D/N in a range: since D/N = C / (6 N^2), the
kept sizes form a window that moves with sqrt(C), as the sizes of a real IsoFLOP sweep do
around each budget's optimum, instead of paying for hopelessly over- or under-trained corners.

Sizes come from the SMDM family table (`model/families.py`: "19M", "113M", ...), whose configs
carry SMDM's recipe, or are written `LAYERSxHIDDEN[xHEADS]` ("2x64x4"), laid over a base YAML
(default `configs/quickstart.yaml`): that is how a CPU sweep uses models far below the family's
6M. MDM and ARM configs of one size differ only in `model.objective` (and the MDM's diffusion
section), so the two objectives see the same data, batch and schedule.

The sweep owns `train.max_steps`, `warmup_steps` (a fraction of the steps), `lr_decay_steps`
(the whole run, as Chinchilla's cosine-to-budget), `eval_interval` (once, at the end),
`eval_iters` and `output_dir`; everything else is the base config plus the user's overrides.
Paths in the manifest are absolute and training runs in the directory the sweep was planned
from (`workdir`), so relative paths in overrides (data.text_file=...) keep working.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_mdm.config import COMPARED_OBJECTIVES as OBJECTIVES
from megatron_mdm.config import (
    ConfigError,
    ExperimentConfig,
    dump_yaml,
    load_config,
    to_dict,
    validate,
)
from megatron_mdm.model.accounting import non_embedding_params
from megatron_mdm.model.families import experiment_dict, member
from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.utils import atomic_write_text

__all__ = [
    "TINY_FAMILY",
    "TINY_LADDER",
    "Manifest",
    "ModelSize",
    "PlannedRun",
    "SweepSpec",
    "load_manifest",
    "extend_sweep",
    "ladder_params",
    "parse_size",
    "plan_steps",
    "write_sweep",
]

MANIFEST_NAME = "manifest.json"
DEFAULT_BASE = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
# Models for a CPU sweep, ~4K to ~1M non-embedding parameters, each ~2x the last, head width
# 16 where it divides. Far below the SMDM family's 6M because a CPU affords budgets of ~1e10-1e12
# FLOPs, where the compute-optimal model has thousands to tens of thousands of parameters;
# `--tokens-per-param` picks the few around each budget's optimum.
TINY_FAMILY = (
    "1x16x1",
    "1x24x2",
    "1x32x2",
    "1x48x3",
    "2x48x3",
    "2x64x4",
    "2x96x6",
    "4x128x8",
)
# The sizes `--rounds` may add around TINY_FAMILY's when an IsoFLOP minimum lands on an edge:
# smaller ones too, since at the smallest CPU budgets the optimum can sit below 4K parameters.
TINY_LADDER = ("1x6x1", "1x8x1", "1x12x1", *TINY_FAMILY)


@dataclass(frozen=True)
class ModelSize:
    """One model of the sweep: an SMDM family member or a custom `LxD[xH]` shape."""

    label: str  # "19M" or "2x64x4"; file names use it lower-cased
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    smdm_member: bool = False

    @property
    def slug(self) -> str:
        return self.label.lower()


_SHAPE = re.compile(r"(\d+)x(\d+)(?:x(\d+))?")


def parse_size(spec: str) -> ModelSize:
    """`LxD[xH]` (layers x hidden [x heads; default hidden/64, at least 1]) or any spelling of an
    SMDM family member ("19M", "smdm-19m", "Diff_LLaMA_19M")."""
    spec = str(spec).strip()
    shape = _SHAPE.fullmatch(spec.lower())
    if shape:
        layers, hidden = int(shape.group(1)), int(shape.group(2))
        heads = int(shape.group(3)) if shape.group(3) else max(1, hidden // 64)
        if min(layers, hidden, heads) < 1 or hidden % heads:
            raise ScalingLawError(
                f"size {spec!r}: need layers, hidden, heads >= 1 and hidden divisible by heads"
            )
        label = f"{layers}x{hidden}x{heads}"
        return ModelSize(label, layers, hidden, heads)

    try:
        m = member(spec)
    except KeyError as e:
        raise ScalingLawError(f"size {spec!r}: not LAYERSxHIDDEN[xHEADS] and {e.args[0]}") from None
    return ModelSize(m.name, m.num_layers, m.hidden_size, m.num_attention_heads, smdm_member=True)


@dataclass
class SweepSpec:
    budgets: list[float]
    out_dir: str
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    sizes: list[str] = field(default_factory=lambda: list(TINY_FAMILY))
    seq_length: int | None = None  # None: the base config's (SMDM members: 2048)
    global_batch_size: int | None = None  # None: the base config's (SMDM members: 256)
    micro_batch_size: int | None = None  # None: the base config's, capped to divide the batch
    base_config: str | None = None  # for LxD[xH] sizes; None: configs/quickstart.yaml
    overrides: list[str] = field(default_factory=list)  # section.key=value, every run
    eval_iters: int = 4  # validation batches, once at the end of each run
    warmup_fraction: float = 0.01  # SMDM's 1%
    tolerance: float = 0.05  # |6ND / C - 1| allowed
    min_steps: int = 10
    tokens_per_param: tuple[float, float] | None = None  # keep runs with D/N in [lo, hi]

    def __post_init__(self) -> None:
        if not self.budgets or any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise ScalingLawError(f"budgets must be positive numbers, got {self.budgets}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ScalingLawError(f"budgets must differ, got {self.budgets}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives:
            raise ScalingLawError(f"objectives must be mdm and/or arm, got {self.objectives}")
        if not self.sizes:
            raise ScalingLawError("no model sizes given")
        if not 0 < self.tolerance < 1:
            raise ScalingLawError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if not 0 <= self.warmup_fraction < 1:
            raise ScalingLawError(f"warmup fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.tokens_per_param is not None:
            lo, hi = self.tokens_per_param
            if not 0 < lo < hi:
                raise ScalingLawError(f"tokens per param range must be 0 < lo < hi, got {lo} {hi}")
        for name in ("eval_iters", "min_steps"):
            if getattr(self, name) < 1:
                raise ScalingLawError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PlannedRun:
    name: str  # "mdm-2x64x4-C1e11"
    objective: str
    size: str
    budget: float  # the nominal C of its IsoFLOP curve
    params: int  # non-embedding
    steps: int
    tokens: int  # steps * global batch * seq length
    flops: float  # 6 * params * tokens, within the tolerance of budget
    config: str  # absolute path of the run's YAML
    output_dir: str  # absolute; where `mdm train` writes metrics.jsonl


@dataclass
class Manifest:
    workdir: str  # where the runs are launched from (relative paths in overrides)
    budgets: list[float]
    objectives: list[str]
    tolerance: float
    runs: list[PlannedRun]
    skipped: list[dict] = field(default_factory=list)  # {objective, size, budget, reason}
    spec: dict | None = None  # the SweepSpec it was planned from (for extending it)
    path: str = ""  # where it was read from / written to; not stored

    def save(self, path: str | Path) -> None:
        d = asdict(self)
        d.pop("path")
        _write_atomic(Path(path), json.dumps(d, indent=1) + "\n")
        self.path = str(path)


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest written by `write_sweep`; a directory means its manifest.json."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        runs = [PlannedRun(**r) for r in d.pop("runs")]
        d.setdefault("spec", None)  # manifests written before --rounds existed
        return Manifest(runs=runs, path=str(path), **d)
    except FileNotFoundError:
        raise ScalingLawError(f"{path}: manifest not found (run the sweep subcommand)") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ScalingLawError(f"{path}: not a sweep manifest ({type(e).__name__}: {e})") from None


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def budget_label(budget: float) -> str:
    """1e11 -> "1e11", 3.16e11 -> "3.16e11": file-name friendly, distinct for distinct budgets
    up to 3 significant digits."""
    mantissa, exponent = f"{budget:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def plan_steps(budget: float, params: int, tokens_per_step: int) -> tuple[int, float]:
    """(steps, relative error of 6 * params * steps * tokens_per_step against budget), steps the
    nearest whole number to the budget (at least 1)."""
    exact = budget / (6.0 * params * tokens_per_step)
    steps = max(1, round(exact))
    return steps, abs(6.0 * params * steps * tokens_per_step / budget - 1.0)


def _base_dict(size: ModelSize, objective: str, spec: SweepSpec) -> dict:
    """The size's config before a budget is applied, as a plain dict."""
    if size.smdm_member:
        d = experiment_dict(size.label, objective)
    else:
        base = spec.base_config or str(DEFAULT_BASE)
        d = to_dict(load_config(base))
        d["model"].update(
            num_layers=size.num_layers,
            hidden_size=size.hidden_size,
            num_attention_heads=size.num_attention_heads,
            num_query_groups=None,
            ffn_hidden_size=None,
            objective=objective,
        )
    d["model"]["objective"] = objective
    if spec.seq_length is not None:
        d["model"]["seq_length"] = spec.seq_length
    train = d["train"]
    if spec.global_batch_size is not None:
        train["global_batch_size"] = spec.global_batch_size
    if spec.micro_batch_size is not None:
        train["micro_batch_size"] = spec.micro_batch_size
    else:  # the base's micro-batch, shrunk until it divides the (new) global batch
        train["micro_batch_size"] = math.gcd(train["micro_batch_size"], train["global_batch_size"])
    # Placeholders; set per budget once the overrides are applied.
    train.update(max_steps=1, warmup_steps=0, lr_decay_steps=None, eval_interval=0, eval_iters=0)
    return d


def _size_config(size: ModelSize, objective: str, spec: SweepSpec, base_dir: Path):
    """The resolved config of one (size, objective), overrides applied, through the project's
    own loader; its YAML stays in `configs/base/` so a load error names a real file."""
    import yaml

    path = base_dir / f"{objective}-{size.slug}.yaml"
    _write_atomic(path, yaml.safe_dump(_base_dict(size, objective, spec), sort_keys=False))
    try:
        return load_config(str(path), spec.overrides)
    except ConfigError as e:
        raise ScalingLawError(str(e)) from None


def _finish(cfg: ExperimentConfig, steps: int, spec: SweepSpec, output_dir: Path) -> None:
    t = cfg.train
    t.max_steps = steps
    t.warmup_steps = int(spec.warmup_fraction * steps)
    t.lr_decay_steps = None
    t.eval_interval = steps
    t.eval_iters = spec.eval_iters
    t.output_dir = str(output_dir)
    validate(cfg)


def _plan(
    cfg: ExperimentConfig,
    size: ModelSize,
    objective: str,
    budget: float,
    spec: SweepSpec,
    out: Path,
    window: bool = True,
) -> PlannedRun | dict:
    """The run of one (objective, size, budget), its config written; or the skip record saying
    why not. `window=False` ignores `tokens_per_param` (sizes the bracketing asked for)."""
    params = non_embedding_params(cfg.model)
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    steps, error = plan_steps(budget, params, tokens_per_step)
    name = f"{objective}-{size.slug}-C{budget_label(budget)}"
    reason = None
    ratio = steps * tokens_per_step / params
    lim = spec.tokens_per_param if window else None
    if lim and not lim[0] <= ratio <= lim[1]:
        reason = f"D/N = {ratio:.3g} outside [{lim[0]:g}, {lim[1]:g}]"
    elif steps < spec.min_steps:
        reason = f"{steps} steps < min_steps {spec.min_steps}"
    elif error > spec.tolerance:
        reason = f"6ND misses the budget by {100 * error:.1f}%"
    if reason:
        return {"objective": objective, "size": size.label, "budget": budget, "reason": reason}
    run_dir = out / "runs" / name
    _finish(cfg, steps, spec, run_dir)
    config_path = out / "configs" / f"{name}.yaml"
    dump_yaml(cfg, str(config_path))
    tokens = steps * tokens_per_step
    return PlannedRun(
        name=name,
        objective=objective,
        size=size.label,
        budget=float(budget),
        params=params,
        steps=steps,
        tokens=tokens,
        flops=6.0 * params * tokens,
        config=str(config_path),
        output_dir=str(run_dir),
    )


def write_sweep(spec: SweepSpec) -> Manifest:
    """Write `<out>/configs/<run>.yaml` for every run and `<out>/manifest.json`; return the
    manifest. Runs train into `<out>/runs/<run>/`."""
    out = Path(spec.out_dir).resolve()
    sizes = [parse_size(s) for s in spec.sizes]
    if len({s.label for s in sizes}) != len(sizes):
        raise ScalingLawError(f"duplicate model sizes in {spec.sizes}")
    runs: list[PlannedRun] = []
    skipped: list[dict] = []
    for objective in spec.objectives:
        for size in sizes:
            cfg = _size_config(size, objective, spec, out / "configs" / "base")
            for budget in sorted(spec.budgets):
                planned = _plan(cfg, size, objective, budget, spec, out)
                (runs if isinstance(planned, PlannedRun) else skipped).append(planned)
    if not runs:
        raise ScalingLawError("no (size, budget) pair fits: every run was skipped")
    manifest = Manifest(
        workdir=str(Path.cwd()),
        budgets=sorted(float(b) for b in spec.budgets),
        objectives=list(spec.objectives),
        tolerance=spec.tolerance,
        runs=runs,
        skipped=skipped,
        spec=json.loads(json.dumps(asdict(spec))),  # as it reads back
    )
    manifest.save(out / MANIFEST_NAME)
    return manifest


def ladder_params(spec: SweepSpec, labels: list[str]) -> list[tuple[str, int]]:
    """[(label, non-embedding params)] of the ladder sizes, smallest first (MDM configs; the
    count is the same for both objectives)."""
    out = Path(spec.out_dir).resolve() / "configs" / "base"
    sizes = {s.label: s for s in map(parse_size, labels)}  # canonical labels, deduplicated
    counts = [
        (s.label, non_embedding_params(_size_config(s, spec.objectives[0], spec, out).model))
        for s in sizes.values()
    ]
    return sorted(counts, key=lambda item: item[1])


def extend_sweep(
    manifest: Manifest, spec: SweepSpec, requests: list[tuple[str, str, float]]
) -> tuple[list[PlannedRun], list[dict]]:
    """Plan the (objective, size, budget) runs the bracketing asked for, outside the
    tokens-per-param window, append them to the manifest (saved) and return (new runs, new
    skips). Runs already planned are not planned twice."""
    out = Path(spec.out_dir).resolve()
    have = {(r.objective, r.size, r.budget) for r in manifest.runs}
    added: list[PlannedRun] = []
    skipped: list[dict] = []
    for objective, label, budget in requests:
        size = parse_size(label)
        if (objective, size.label, float(budget)) in have:
            continue
        cfg = _size_config(size, objective, spec, out / "configs" / "base")
        planned = _plan(cfg, size, objective, float(budget), spec, out, window=False)
        if isinstance(planned, PlannedRun):
            added.append(planned)
            have.add((objective, size.label, float(budget)))
        else:
            skipped.append(planned)
    manifest.runs.extend(added)
    manifest.skipped.extend(skipped)
    manifest.save(manifest.path or out / MANIFEST_NAME)
    return added, skipped
