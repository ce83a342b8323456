"""Bracketing the IsoFLOP minima: which model sizes to run next so that every (objective, budget)
parabola has its minimum inside the sampled sizes.

A pure function of the results so far (no training, no files): `bracket` takes, per
(objective, budget), the (size, loss) points measured, and the size ladder (every size the sweep
may use, with its non-embedding parameter count), and returns one `Decision` per curve.

A curve is **interior** when all three hold:
- it has >= 3 distinct sizes (a parabola needs them),
- the least-squares parabola in ln(params) is convex with its vertex strictly inside the sampled
  range (what `fit` calls not clamped), and
- the lowest measured loss is not at the smallest or largest sampled size (a vertex just inside
  a monotone set of points is an extrapolation, not a bracketed minimum).

Otherwise it is on an **edge**, and the direction is where the minimum lies: the vertex's side
when the parabola is convex, else the side of the lowest measured loss (a concave or flat fit
says nothing about the vertex). The decision then asks for the next `extend_by` ladder sizes
beyond that end of the sampled range (skipping sizes in `unavailable`, which the planner could
not fit to the budget); when the ladder has none left the curve stays on the edge and
`exhausted` is set, which the sweep reports. A curve with fewer than 3 sizes asks for the nearest
ladder sizes on both sides instead. Sizes are only ever added (widening): points already
measured stay in the fit, so a round never throws away compute; since new sizes are added on the
side where the minimum is, the sampled range is re-centred on it round by round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from megatron_mdm.scaling.fit import MIN_SIZES, fit_isoflop_curve

__all__ = ["Decision", "bracket", "is_interior"]


@dataclass(frozen=True)
class Decision:
    objective: str
    budget: float
    status: str  # "interior", "extend" (new sizes asked for), "edge" (ladder exhausted)
    direction: str  # "", "down" (smaller models), "up" (larger), "both" (< 3 sizes)
    new_sizes: tuple[str, ...] = ()  # ladder labels to run at this budget, smallest first
    n_opt: float | None = None  # the parabola's minimum (clamped), when it could be fitted

    @property
    def exhausted(self) -> bool:
        return self.status == "edge"


@dataclass
class _Curve:
    params: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def is_interior(params, losses) -> tuple[bool, str, float | None]:
    """(interior?, direction of the minimum if not, the fitted N_opt) for one IsoFLOP curve's
    points; see the module docstring for the rule."""
    params, losses = np.asarray(params, float), np.asarray(losses, float)
    order = np.argsort(params)
    params, losses = params[order], losses[order]
    if len(set(params.tolist())) < MIN_SIZES:
        return False, "both", None
    curve = fit_isoflop_curve("", 0.0, params, losses)
    best = int(np.argmin(losses))
    convex = curve.coeffs[2] > 0
    if not curve.clamped and 0 < best < len(params) - 1:
        return True, "", curve.n_opt
    if convex:  # the vertex says where; a clamped vertex lies beyond that end
        vertex = -curve.coeffs[1] / (2 * curve.coeffs[2])
        mid = 0.5 * (np.log(params[0]) + np.log(params[-1]))
        direction = "down" if vertex < mid else "up"
        if not curve.clamped:  # vertex inside, but the best point is at an end: go that way
            direction = "down" if best == 0 else "up"
    else:
        direction = "down" if best < len(params) / 2 else "up"
    return False, direction, curve.n_opt


def _beyond(
    ladder: list[tuple[str, float]], sampled: list[float], direction: str, k: int, unavailable
) -> list[str]:
    """The next `k` ladder labels past the smallest (down) / largest (up) sampled size."""
    if direction == "down":
        edge = min(sampled)
        candidates = [lbl for lbl, n in reversed(ladder) if n < edge]
    else:
        edge = max(sampled)
        candidates = [lbl for lbl, n in ladder if n > edge]
    return [lbl for lbl in candidates if lbl not in unavailable][:k]


def bracket(
    points: dict[tuple[str, float], list[tuple[float, float]]],
    ladder: list[tuple[str, float]],
    extend_by: int = 2,
    unavailable: dict[tuple[str, float], set[str]] | None = None,
) -> list[Decision]:
    """One decision per (objective, budget) of `points` ({(objective, budget): [(params, loss),
    ...]}), in sorted order. `ladder` is [(label, params), ...]; `unavailable` names, per curve,
    ladder labels that cannot be run at that budget (they are passed over)."""
    if extend_by < 1:
        raise ValueError(f"extend_by must be >= 1, got {extend_by}")
    ladder = sorted(ladder, key=lambda item: item[1])
    unavailable = unavailable or {}
    decisions = []
    for key in sorted(points):
        objective, budget = key
        pts = points[key]
        params = [p for p, _ in pts]
        losses = [loss for _, loss in pts]
        skip = unavailable.get(key, set()) | {lbl for lbl, n in ladder if n in set(params)}
        interior, direction, n_opt = is_interior(params, losses)
        if interior:
            decisions.append(Decision(objective, budget, "interior", "", (), n_opt))
            continue
        if direction == "both":
            new = _beyond(ladder, params, "down", 1, skip) + _beyond(ladder, params, "up", 1, skip)
            if len(set(params)) + len(new) < MIN_SIZES:  # one side exhausted: take more
                new += [
                    lbl
                    for d in ("down", "up")
                    for lbl in _beyond(ladder, params, d, MIN_SIZES, skip)
                    if lbl not in new
                ][: MIN_SIZES - len(set(params)) - len(new)]
        else:
            new = _beyond(ladder, params, direction, extend_by, skip)
        by_size = dict(ladder)
        new = sorted(set(new), key=lambda lbl: by_size[lbl])
        status = "extend" if new else "edge"
        decisions.append(Decision(objective, budget, status, direction, tuple(new), n_opt))
    return decisions
