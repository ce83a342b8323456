"""Bracketing IsoFLOP minima (`megatron_mdm/scaling/bracket.py`, `sweep --rounds`): given a table
of (size, loss) per curve, which sizes to run next. No training: losses come from parabolas in
ln(params) whose minimum is placed by hand, so where it lies relative to the sampled sizes is
known independently of the fit.
"""

from __future__ import annotations

import json
import math

import pytest

from megatron_mdm.config import load_config
from megatron_mdm.model.accounting import non_embedding_params
from megatron_mdm.scaling.bracket import bracket, is_interior
from megatron_mdm.scaling.sweep import (
    SweepSpec,
    extend_sweep,
    ladder_params,
    load_manifest,
    write_sweep,
)

# A ladder of sizes ~2x apart: labels are arbitrary, params what matters.
LADDER = [(f"s{i}", 1000.0 * 2**i) for i in range(10)]  # s0 = 1K ... s9 = 512K


def curve(labels, n_star, l_star=2.0, k=0.05):
    """(params, loss) of the ladder sizes `labels` on loss = l_star + k ln(N/n_star)^2."""
    by = dict(LADDER)
    return [(by[lbl], l_star + k * math.log(by[lbl] / n_star) ** 2) for lbl in labels]


def decide(points, **kw):
    return {(d.objective, d.budget): d for d in bracket(points, LADDER, **kw)}


def test_interior_minimum_needs_nothing():
    d = decide({("mdm", 1e11): curve(["s2", "s3", "s4", "s5"], n_star=6000)})[("mdm", 1e11)]
    assert (d.status, d.new_sizes) == ("interior", ())
    assert d.n_opt == pytest.approx(6000, rel=1e-6)


def test_minimum_below_the_grid_adds_smaller_sizes():
    """The true minimum is at 1.5K, below the sampled 4K..32K: extend down by two ladder steps."""
    d = decide({("arm", 3e10): curve(["s2", "s3", "s4", "s5"], n_star=1500)})[("arm", 3e10)]
    assert (d.status, d.direction, d.new_sizes) == ("extend", "down", ("s0", "s1"))
    d = decide({("arm", 3e10): curve(["s2", "s3", "s4", "s5"], n_star=1500)}, extend_by=1)
    assert d[("arm", 3e10)].new_sizes == ("s1",)


def test_minimum_above_the_grid_adds_larger_sizes():
    d = decide({("mdm", 1e12): curve(["s2", "s3", "s4"], n_star=200_000)})[("mdm", 1e12)]
    assert (d.status, d.direction, d.new_sizes) == ("extend", "up", ("s5", "s6"))


def test_vertex_just_inside_but_best_point_at_the_end_is_an_edge():
    """Points 1K, 2K, 4K, 8K on a parabola centred at 1.05K: the fitted vertex is (barely) inside
    the range, yet the lowest measured loss is the smallest size; that is no bracket."""
    pts = curve(["s1", "s2", "s3", "s4"], n_star=2100)
    interior, direction, n_opt = is_interior([p for p, _ in pts], [loss for _, loss in pts])
    assert n_opt > 2000 and not interior and direction == "down"
    # Two sizes later, the minimum is bracketed.
    pts = curve(["s0", "s1", "s2", "s3", "s4"], n_star=2100)
    assert is_interior([p for p, _ in pts], [loss for _, loss in pts])[0]


def test_concave_curve_goes_towards_its_lowest_point():
    pts = [(1000.0 * 2**i, 3.0 - 0.01 * i * i) for i in range(2, 6)]  # concave, falling
    d = decide({("mdm", 1e11): pts})[("mdm", 1e11)]
    assert (d.direction, d.new_sizes) == ("up", ("s6", "s7"))


def test_ladder_exhausted_is_reported_as_edge():
    d = decide({("arm", 3e10): curve(["s0", "s1", "s2"], n_star=100)})[("arm", 3e10)]
    assert (d.status, d.direction, d.new_sizes, d.exhausted) == ("edge", "down", (), True)


def test_unavailable_sizes_are_passed_over():
    pts = {("arm", 3e10): curve(["s3", "s4", "s5"], n_star=1500)}
    d = decide(pts, unavailable={("arm", 3e10): {"s2"}})[("arm", 3e10)]
    assert d.new_sizes == ("s0", "s1")


def test_too_few_sizes_asks_for_neighbours_on_both_sides():
    d = decide({("mdm", 1e11): curve(["s4", "s5"], n_star=20_000)})[("mdm", 1e11)]
    assert (d.direction, d.new_sizes) == ("both", ("s3", "s6"))
    d = decide({("mdm", 1e11): curve(["s0", "s1"], n_star=2000)})[("mdm", 1e11)]
    assert d.new_sizes == ("s2",)  # nothing below s0; one size above makes three


def test_each_curve_decided_on_its_own():
    """One table, four curves (two objectives x two budgets), each with its own answer."""
    points = {
        ("mdm", 3e10): curve(["s1", "s2", "s3", "s4"], n_star=4000),
        ("mdm", 1e11): curve(["s2", "s3", "s4", "s5"], n_star=900),
        ("arm", 3e10): curve(["s1", "s2", "s3", "s4"], n_star=40_000),
        ("arm", 1e11): curve(["s2", "s3", "s4", "s5"], n_star=10_000),
    }
    got = {k: (d.status, d.new_sizes) for k, d in decide(points).items()}
    assert got == {
        ("mdm", 3e10): ("interior", ()),
        ("mdm", 1e11): ("extend", ("s0", "s1")),
        ("arm", 3e10): ("extend", ("s5", "s6")),
        ("arm", 1e11): ("interior", ()),
    }


def test_repeated_rounds_reach_an_interior_minimum():
    """Feeding each round's new sizes back in walks the grid to the minimum, then stops."""
    labels, n_star = ["s6", "s7", "s8", "s9"], 3000.0
    for _ in range(4):
        d = decide({("mdm", 1e11): curve(labels, n_star)})[("mdm", 1e11)]
        if d.status == "interior":
            break
        labels = sorted(set(labels) | set(d.new_sizes), key=lambda s: int(s[1:]))
    assert d.status == "interior" and d.n_opt == pytest.approx(n_star, rel=1e-6)


def test_extend_sweep_plans_requested_sizes_outside_the_window(tmp_path):
    """Sizes the bracketing asks for are planned even outside --tokens-per-param, hit their
    budget, are recorded in the manifest (with the spec to extend it), and not planned twice."""
    spec = SweepSpec(
        budgets=[3e10],
        out_dir=str(tmp_path / "sw"),
        objectives=["arm"],
        sizes=["1x16x1", "1x24x2", "1x32x2"],
        seq_length=128,
        global_batch_size=8,
        micro_batch_size=8,
        tokens_per_param=(2.5, 400.0),
    )
    manifest = write_sweep(spec)
    assert manifest.spec["sizes"] == spec.sizes
    ladder = dict(ladder_params(spec, ["1x8x1", "1x12x1", "1x16x1"]))
    assert ladder["1x8x1"] < ladder["1x12x1"] < ladder["1x16x1"]
    # 1x8x1 at 3e10 has D/N far above 400: the window would have dropped it.
    request = [("arm", "1x8x1", 3e10), ("arm", "1x12x1", 3e10)]
    added, skipped = extend_sweep(manifest, spec, request)
    assert [r.size for r in added] == ["1x8x1", "1x12x1"] and not skipped
    for run in added:
        cfg = load_config(run.config)
        n = non_embedding_params(cfg.model)
        assert n == ladder[run.size] and run.tokens / n > 400
        tokens = cfg.train.max_steps * cfg.train.global_batch_size * cfg.model.seq_length
        assert abs(6 * n * tokens / 3e10 - 1) <= 0.05
    again = load_manifest(tmp_path / "sw")
    assert len(again.runs) == len(manifest.runs) and again.spec == manifest.spec
    assert extend_sweep(again, spec, request) == ([], [])
    assert json.loads((tmp_path / "sw" / "manifest.json").read_text())["runs"][-1]["size"] == (
        "1x12x1"
    )


def test_bad_rounds_arguments_are_one_line(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT, subprocess_env

    for flag, value in (("--rounds", "-1"), ("--extend-by", "0")):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "scaling_law.py"), "sweep", "--budgets", "1e11",
             "--out", str(tmp_path / "x"), flag, value],
            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert flag in proc.stderr and not (tmp_path / "x").exists()
