"""IsoFLOP analysis (Chinchilla's approach 2, as SMDM uses it): per compute budget, the minimum of
a parabola in log(params); across budgets, the power law L(C) = a * C^(-alpha) through those
minima; between objectives, the compute multiple.

Definitions (the `fit` subcommand prints them as its JSON line):
- Budget groups: rows of one objective whose `flops` agree within 12% are one IsoFLOP curve
  (exact in files from `collect`, which writes the nominal budget; a file carrying each run's
  own 6ND, which the sweep keeps within 5% of C, groups the same way). Budgets closer than that
  are merged, which no real sweep does. A group needs >= 3 distinct sizes; smaller ones are
  reported and left out.
- Minimum: least-squares parabola loss = c0 + c1*x + c2*x^2 with x = ln(params). Its vertex is
  the minimum when c2 > 0 and it lies within the sampled sizes; otherwise the minimum is
  clamped to the lowest end of the sampled range and flagged (the sweep should then extend
  its sizes that way).
- Power law: ordinary least squares of ln(loss_min) = ln(a) - alpha * ln(C) over the budgets
  (>= 2 needed). The same fit of ln(N_opt) gives the optimal-size exponent, for the summary.
- Compute multiple: with C_ref the largest ARM budget and L_ref = L_arm(C_ref) the ARM law's
  loss there, the MDM law reaches L_ref at C_mdm = (a_mdm / L_ref)^(1/alpha_mdm); the multiple
  is C_mdm / C_ref (SMDM reports ~16x at its largest budget). Absent unless both objectives
  are fitted; null when alpha_mdm is 0 (the MDM law never reaches another loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.scaling.results import OBJECTIVES, Result

__all__ = [
    "BUDGET_MERGE_RATIO",
    "IsoFlopCurve",
    "ObjectiveFit",
    "PowerLaw",
    "ScalingFit",
    "fit_isoflop_curve",
    "fit_power_law",
    "fit_results",
    "group_budgets",
]

BUDGET_MERGE_RATIO = 1.12  # flops within this factor of a group's smallest belong to it
MIN_SIZES = 3  # a parabola through fewer points is not a fit


@dataclass(frozen=True)
class PowerLaw:
    """y = a * x^(-alpha)."""

    a: float
    alpha: float

    def __call__(self, x):
        return self.a * np.power(x, -self.alpha)

    def inverse(self, y: float) -> float:
        """The x where the law equals y."""
        return (self.a / y) ** (1.0 / self.alpha)


@dataclass
class IsoFlopCurve:
    objective: str
    flops: float  # the budget: geometric mean of the group's flops
    params: np.ndarray  # sorted ascending
    losses: np.ndarray
    coeffs: tuple[float, float, float]  # c0, c1, c2 of the parabola in ln(params)
    n_opt: float
    loss_min: float
    clamped: bool  # the vertex was not a minimum inside the sampled sizes

    def parabola(self, params):
        x = np.log(params)
        c0, c1, c2 = self.coeffs
        return c0 + c1 * x + c2 * x * x


@dataclass
class ObjectiveFit:
    objective: str
    curves: list[IsoFlopCurve]
    law: PowerLaw  # loss_min vs flops
    n_opt_law: PowerLaw  # n_opt = a * C^(-alpha): alpha is minus the size exponent
    left_out: list[tuple[float, int]] = field(default_factory=list)  # (budget, distinct sizes)


@dataclass
class ScalingFit:
    objectives: dict[str, ObjectiveFit]
    compute_multiple: float | None = None
    reference_flops: float | None = None  # C_ref of the compute multiple
    reference_loss: float | None = None


def group_budgets(flops: list[float]) -> list[list[int]]:
    """Indices of `flops` grouped into budgets, smallest budget first (see module docstring)."""
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and flops[i] <= flops[groups[-1][0]] * BUDGET_MERGE_RATIO:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def fit_isoflop_curve(
    objective: str, flops: float, params: np.ndarray, losses: np.ndarray
) -> IsoFlopCurve:
    """Parabola in ln(params) through one budget's points and its minimum."""
    order = np.argsort(params)
    params, losses = np.asarray(params, float)[order], np.asarray(losses, float)[order]
    x = np.log(params)
    # Centred for conditioning; ln(params) of a billion-parameter model is ~20.
    mid = x.mean()
    design = np.stack([np.ones_like(x), x - mid, (x - mid) ** 2], axis=1)
    (b0, b1, b2), *_ = np.linalg.lstsq(design, losses, rcond=None)
    coeffs = (b0 - b1 * mid + b2 * mid * mid, b1 - 2 * b2 * mid, b2)
    lo, hi = x[0], x[-1]
    vertex = -b1 / (2 * b2) + mid if b2 > 0 else math.nan
    clamped = not (b2 > 0 and lo <= vertex <= hi)
    if clamped:  # the parabola's lower end of the sampled range
        ends = [lo, hi]
        vertex = min(ends, key=lambda e: b0 + b1 * (e - mid) + b2 * (e - mid) ** 2)
    loss_min = float(b0 + b1 * (vertex - mid) + b2 * (vertex - mid) ** 2)
    return IsoFlopCurve(
        objective,
        flops,
        params,
        losses,
        tuple(map(float, coeffs)),
        float(math.exp(vertex)),
        loss_min,
        clamped,
    )


def fit_power_law(x, y) -> PowerLaw:
    """Least squares in log-log: ln y = ln a - alpha ln x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(math.exp(intercept)), float(-slope))


def _fit_objective(objective: str, rows: list[Result]) -> ObjectiveFit:
    groups = group_budgets([r.flops for r in rows])
    curves, left_out = [], []
    for group in groups:
        members = [rows[i] for i in group]
        budget = float(math.exp(np.mean([math.log(r.flops) for r in members])))
        sizes = {r.params for r in members}
        if len(sizes) < MIN_SIZES:
            left_out.append((budget, len(sizes)))
            continue
        curve = fit_isoflop_curve(
            objective,
            budget,
            np.array([r.params for r in members]),
            np.array([r.loss for r in members]),
        )
        if not curve.loss_min > 0:
            raise ScalingLawError(
                f"{objective}: the parabola at budget {budget:.3g} dips to loss "
                f"{curve.loss_min:.4g} <= 0; cannot fit a power law through it"
            )
        curves.append(curve)
    if len(curves) < 2:
        raise ScalingLawError(
            f"{objective}: too few points: {len(curves)} budget(s) with >= {MIN_SIZES} model "
            f"sizes, need 2 to fit L(C) = a * C^(-alpha)"
        )
    flops = [c.flops for c in curves]
    return ObjectiveFit(
        objective,
        curves,
        fit_power_law(flops, [c.loss_min for c in curves]),
        fit_power_law(flops, [c.n_opt for c in curves]),
        left_out,
    )


def fit_results(rows: list[Result]) -> ScalingFit:
    """Fit every objective present in `rows`, and the compute multiple when both are."""
    fits = {
        obj: _fit_objective(obj, [r for r in rows if r.objective == obj])
        for obj in OBJECTIVES
        if any(r.objective == obj for r in rows)
    }
    out = ScalingFit(fits)
    if "mdm" in fits and "arm" in fits:
        arm, mdm = fits["arm"], fits["mdm"].law
        out.reference_flops = max(c.flops for c in arm.curves)
        out.reference_loss = float(arm.law(out.reference_flops))
        if mdm.alpha != 0 and math.isfinite(mdm.alpha):
            multiple = mdm.inverse(out.reference_loss) / out.reference_flops
            out.compute_multiple = multiple if math.isfinite(multiple) else None
    return out


def result_json(fit: ScalingFit) -> dict:
    """The `fit` subcommand's last line."""
    d: dict = {
        obj: {"a": f.law.a, "alpha": f.law.alpha, "size_exponent": -f.n_opt_law.alpha}
        for obj, f in fit.objectives.items()
    }
    if len(fit.objectives) == 2:
        d["compute_multiple"] = fit.compute_multiple
    return d


def summary_lines(fit: ScalingFit) -> list[str]:
    """Human-readable account of the fit, printed before the JSON line."""
    lines = []
    for obj, f in fit.objectives.items():
        lines.append(f"{obj}: IsoFLOP minima (parabola in ln params)")
        for c in f.curves:
            note = "  [clamped: minimum at the edge of the sampled sizes]" if c.clamped else ""
            lines.append(
                f"  C={c.flops:.3g}: {len(c.params)} sizes {c.params.min():.3g}..{c.params.max():.3g}"
                f", min loss {c.loss_min:.4f} at N={c.n_opt:.3g}{note}"
            )
        for budget, n in f.left_out:
            lines.append(f"  C={budget:.3g}: left out, {n} size(s) < {MIN_SIZES}")
        lines.append(
            f"  L(C) = {f.law.a:.4g} * C^(-{f.law.alpha:.4f});  N_opt ~ C^{-f.n_opt_law.alpha:.3f}"
        )
    if fit.reference_flops is not None:
        if fit.compute_multiple is None:
            lines.append("compute multiple: undefined (the MDM law is flat)")
        else:
            lines.append(
                f"compute multiple: the MDM needs {fit.compute_multiple:.3g}x the compute to "
                f"reach the ARM's loss {fit.reference_loss:.4f} at C={fit.reference_flops:.3g}"
            )
    return lines
