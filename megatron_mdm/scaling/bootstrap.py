"""Bootstrap confidence intervals for a scaling-law fit: the loss exponent alpha and the
optimal-size exponent of each objective, and the compute multiple.

Method: a seeded **residual bootstrap** over the IsoFLOP points. Each curve's parabola leaves
residuals; per objective they are pooled, each scaled by sqrt(n / (n - 3)) for its curve's n
points (a parabola has 3 coefficients, so raw residuals understate the noise; curves of exactly
3 points fit exactly and contribute none) and centred. A replicate adds residuals drawn with
replacement to every curve's fitted losses, then redoes the whole analysis the way `fit` does it:
parabola minima (clamped the same way), the power laws through them, and the compute multiple
with the same reference budget. The interval is the percentile interval of the replicates
(order statistics, `inverted_cdf`), 95% by default.

Why residuals rather than cases: the sizes are the sweep's design, 4-6 per curve; resampling
them with replacement leaves many replicates with fewer than 3 distinct sizes, where no
parabola exists. Holding the sizes and resampling the noise keeps every replicate fittable.

A replicate whose MDM exponent is <= 0 never reaches the ARM's loss: its multiple is +inf, so
an upper bound of inf means more than (1 - level) / 2 of the replicates found no crossing.
Replicates where a parabola's minimum is <= 0 (no power law through it) are dropped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.scaling.fit import IsoFlopCurve, ScalingFit, fit_isoflop_curve, fit_power_law

__all__ = ["Bootstrap", "bootstrap_fit", "bootstrap_json", "bootstrap_lines"]

PARABOLA_COEFFS = 3


@dataclass
class Bootstrap:
    replicates: int  # asked for
    seed: int
    level: float
    alpha: dict[str, tuple[float, float]]  # per objective
    size_exponent: dict[str, tuple[float, float]]  # N_opt ~ C^b: interval of b
    compute_multiple: tuple[float, float] | None = None
    dropped: int = 0  # replicates with a non-positive parabola minimum
    no_crossing: int = 0  # replicates whose MDM law never reaches the ARM's loss
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    method: str = "residual"


def _pooled_residuals(curves: list[IsoFlopCurve]) -> np.ndarray:
    pool = []
    for c in curves:
        n = len(c.params)
        if n > PARABOLA_COEFFS:
            resid = c.losses - c.parabola(c.params)
            pool.append(resid * math.sqrt(n / (n - PARABOLA_COEFFS)))
    if not pool:
        return np.zeros(1)  # every curve interpolated exactly: no noise to resample
    out = np.concatenate(pool)
    return out - out.mean()


def _replicate(fit: ScalingFit, pools: dict[str, np.ndarray], rng) -> dict[str, float] | None:
    """One bootstrap replicate of the exponents and the multiple; None if it cannot be fitted."""
    out: dict[str, float] = {}
    laws = {}
    for obj, f in fit.objectives.items():
        minima, n_opts, flops = [], [], []
        for c in f.curves:
            noisy = c.parabola(c.params) + rng.choice(pools[obj], size=len(c.params))
            r = fit_isoflop_curve(obj, c.flops, c.params, noisy)
            if not r.loss_min > 0:
                return None
            minima.append(r.loss_min)
            n_opts.append(r.n_opt)
            flops.append(c.flops)
        laws[obj] = fit_power_law(flops, minima)
        out[f"{obj}.alpha"] = laws[obj].alpha
        out[f"{obj}.size_exponent"] = -fit_power_law(flops, n_opts).alpha
    if fit.reference_flops is not None:
        ref_loss = float(laws["arm"](fit.reference_flops))
        mdm = laws["mdm"]
        multiple = mdm.inverse(ref_loss) / fit.reference_flops if mdm.alpha > 0 else math.inf
        out["compute_multiple"] = multiple if math.isfinite(multiple) else math.inf
    return out


def bootstrap_fit(
    fit: ScalingFit, replicates: int = 1000, seed: int = 0, level: float = 0.95
) -> Bootstrap:
    """Percentile intervals of the fit's exponents and compute multiple (module docstring)."""
    if replicates < 2:
        raise ScalingLawError(f"bootstrap replicates must be >= 2, got {replicates}")
    if not 0 < level < 1:
        raise ScalingLawError(f"bootstrap level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    pools = {obj: _pooled_residuals(f.curves) for obj, f in fit.objectives.items()}
    draws: dict[str, list[float]] = {}
    dropped = 0
    for _ in range(replicates):
        rep = _replicate(fit, pools, rng)
        if rep is None:
            dropped += 1
            continue
        for k, v in rep.items():
            draws.setdefault(k, []).append(v)
    if not draws:
        raise ScalingLawError(f"bootstrap: all {replicates} replicates failed to fit")
    samples = {k: np.asarray(v, float) for k, v in draws.items()}
    q = ((1 - level) / 2, 1 - (1 - level) / 2)

    def interval(key: str) -> tuple[float, float]:
        lo, hi = np.quantile(samples[key], q, method="inverted_cdf")
        return float(lo), float(hi)

    boot = Bootstrap(
        replicates=replicates,
        seed=seed,
        level=level,
        alpha={obj: interval(f"{obj}.alpha") for obj in fit.objectives},
        size_exponent={obj: interval(f"{obj}.size_exponent") for obj in fit.objectives},
        dropped=dropped,
        samples=samples,
    )
    if "compute_multiple" in samples:
        boot.compute_multiple = interval("compute_multiple")
        boot.no_crossing = int(np.isinf(samples["compute_multiple"]).sum())
    return boot


def _fmt(iv: tuple[float, float], spec: str) -> str:
    return "[" + ", ".join("inf" if math.isinf(v) else format(v, spec) for v in iv) + "]"


def bootstrap_lines(fit: ScalingFit, boot: Bootstrap) -> list[str]:
    """The intervals, for `fit`'s printed summary."""
    pct = f"{100 * boot.level:g}%"
    lines = [
        f"bootstrap ({boot.method}, {boot.replicates} replicates, seed {boot.seed}): "
        f"{pct} intervals"
        + (f"; {boot.dropped} replicate(s) dropped (minimum <= 0)" if boot.dropped else "")
    ]
    for obj, f in fit.objectives.items():
        lines.append(
            f"  {obj}: alpha {f.law.alpha:.4f} {_fmt(boot.alpha[obj], '.4f')};  N_opt exponent "
            f"{-f.n_opt_law.alpha:.3f} {_fmt(boot.size_exponent[obj], '.3f')}"
        )
    if boot.compute_multiple is not None and fit.compute_multiple is not None:
        note = f" ({boot.no_crossing} replicate(s) never cross)" if boot.no_crossing else ""
        lines.append(
            f"  compute multiple {fit.compute_multiple:.3g}x "
            f"{_fmt(boot.compute_multiple, '.3g')}{note}"
        )
    return lines


def _json_interval(iv: tuple[float, float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in iv]  # JSON has no inf: null


def bootstrap_json(boot: Bootstrap) -> dict:
    """Merged into `fit`'s JSON line: {"mdm": {"alpha_ci": .., "size_exponent_ci": ..}, ...,
    "compute_multiple_ci": .., "bootstrap": {...}}; an unbounded end is null."""
    d: dict = {
        obj: {
            "alpha_ci": _json_interval(boot.alpha[obj]),
            "size_exponent_ci": _json_interval(boot.size_exponent[obj]),
        }
        for obj in boot.alpha
    }
    if boot.compute_multiple is not None:
        d["compute_multiple_ci"] = _json_interval(boot.compute_multiple)
    d["bootstrap"] = {
        "method": boot.method,
        "replicates": boot.replicates,
        "seed": boot.seed,
        "level": boot.level,
        "dropped": boot.dropped,
        "no_crossing": boot.no_crossing,
    }
    return d
