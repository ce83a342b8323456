"""`scaling_law.py sweep --rounds N`: train the planned runs, bracket each IsoFLOP minimum
(`bracket.py`), plan the sizes it asks for, and train again, up to N rounds in all.

Round 1 trains the planned sweep; after each round the finished runs' losses are grouped per
(objective, budget) and `bracket` decides; the sizes it asks for are planned outside the
tokens-per-param window (`extend_sweep`) and trained in the next round. The loop stops early
when every curve is interior or at the end of the ladder. The manifest grows as it goes, so an
interrupted `--rounds` sweep started again with the same arguments re-plans the same first
round, skips every finished run, and re-derives the same extensions from the same losses.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from megatron_mdm.scaling.bracket import Decision, bracket
from megatron_mdm.scaling.results import final_val_loss
from megatron_mdm.scaling.runner import RunOutcome, run_local
from megatron_mdm.scaling.sweep import (
    Manifest,
    SweepSpec,
    extend_sweep,
    ladder_params,
    write_sweep,
)

__all__ = ["RoundsReport", "bracket_manifest", "run_rounds"]


@dataclass
class RoundsReport:
    manifest: Manifest
    rounds: int  # rounds trained
    decisions: list[Decision]  # after the last round
    outcomes: list[RunOutcome]  # every run of every round

    @property
    def on_edge(self) -> list[Decision]:
        return [d for d in self.decisions if d.status != "interior"]


def bracket_manifest(
    manifest: Manifest, ladder: list[tuple[str, int]], extend_by: int
) -> list[Decision]:
    """Decisions for the finished runs of a manifest (see bracket.py)."""
    points: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    for run in manifest.runs:
        loss = final_val_loss(run)
        if loss is not None:
            points[(run.objective, run.budget)].append((float(run.params), loss))
    unavailable: dict[tuple[str, float], set[str]] = defaultdict(set)
    for s in manifest.skipped:  # sizes that cannot hit this budget (steps, rounding)
        if not str(s["reason"]).startswith("D/N"):  # the window never binds an extension
            unavailable[(s["objective"], float(s["budget"]))].add(s["size"])
    return bracket(dict(points), ladder, extend_by=extend_by, unavailable=dict(unavailable))


def run_rounds(
    spec: SweepSpec,
    rounds: int,
    ladder: list[str],
    extend_by: int = 2,
    progress: bool = True,
    echo=print,
) -> RoundsReport:
    """Plan, then train and bracket for up to `rounds` rounds; `echo` gets the decisions."""
    manifest = write_sweep(spec)
    sizes = ladder_params(spec, ladder)
    outcomes: list[RunOutcome] = []
    decisions: list[Decision] = []
    done = 0
    for r in range(1, rounds + 1):
        echo(f"round {r}/{rounds}: {len(manifest.runs)} run(s) planned")
        outcomes += run_local(manifest, progress=progress, echo=echo)
        done = r
        decisions = bracket_manifest(manifest, sizes, extend_by)
        for d in decisions:
            echo(_describe(d))
        requests = [(d.objective, s, d.budget) for d in decisions for s in d.new_sizes]
        if not requests or r == rounds:
            break
        added, skipped = extend_sweep(manifest, spec, requests)
        for s in skipped:
            echo(f"  cannot add {s['objective']} {s['size']} at C={s['budget']:.3g}: {s['reason']}")
        if not added:
            break
    return RoundsReport(manifest, done, decisions, outcomes)


def _describe(d: Decision) -> str:
    where = f"  {d.objective} C={d.budget:.3g}: "
    if d.status == "interior":
        return where + f"minimum inside the sizes (N_opt {d.n_opt:.3g})"
    if d.direction == "both":
        what = f"fewer than 3 sizes; adding {', '.join(d.new_sizes) or 'none: ladder exhausted'}"
        return where + what
    side = {"down": "smallest", "up": "largest"}[d.direction]
    if d.status == "edge":
        return where + f"minimum at the {side} size, no more ladder sizes that way [edge]"
    return where + f"minimum at the {side} size: adding {', '.join(d.new_sizes)}"
