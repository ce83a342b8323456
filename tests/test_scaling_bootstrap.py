"""Bootstrap intervals of a scaling-law fit (`megatron_mdm/scaling/bootstrap.py`, `fit
--bootstrap`). Data are synthetic IsoFLOP curves with a known loss exponent, optimal-size
exponent and hence compute multiple, plus seeded Gaussian noise: the truth is known
independently of the fit, so an interval can be checked for covering it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, subprocess_env

from megatron_mdm.scaling.bootstrap import bootstrap_fit
from megatron_mdm.scaling.fit import fit_results
from megatron_mdm.scaling.results import Result

BUDGETS = (1e10, 3e10, 1e11, 3e11, 1e12)
OFFSETS = (-1.4, -0.7, -0.1, 0.5, 1.1, 1.7)  # ln(N / N_opt) of the sampled sizes
TRUTH = {"mdm": (12.0, 0.07), "arm": (6.0, 0.05)}  # a, alpha
SIZE_EXPONENT = 0.5


def true_multiple() -> float:
    """C_mdm / C_ref where the true MDM law reaches the true ARM loss at the largest budget."""
    (a_m, al_m), (a_a, al_a) = TRUTH["mdm"], TRUTH["arm"]
    c_ref = max(BUDGETS)
    loss = a_a * c_ref**-al_a
    return (a_m / loss) ** (1 / al_m) / c_ref


def synthetic(seed: int, noise: float) -> list[Result]:
    """Points on loss = a C^-alpha + 0.06 ln(N/N_opt)^2 (+ noise), N_opt = 0.2 C^0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for obj, (a, alpha) in TRUTH.items():
        for c in BUDGETS:
            n_opt = 0.2 * c**SIZE_EXPONENT
            for u in OFFSETS:
                n = n_opt * math.exp(u)
                loss = a * c**-alpha + 0.06 * u * u + noise * rng.standard_normal()
                rows.append(Result(obj, n, c / (6 * n), c, loss))
    return rows


def covers(iv, value) -> bool:
    return iv[0] <= value <= iv[1]


def test_intervals_cover_the_true_exponents_and_multiple():
    """Across 8 noisy data sets, the 95% intervals cover the true alpha, size exponent and
    compute multiple in most of them (binomial: >= 6 of 8 fails with probability < 1% for a
    true 95% interval), and they are not trivially wide."""
    hits = {"alpha": 0, "size": 0, "multiple": 0}
    widths = []
    for seed in range(8):
        fit = fit_results(synthetic(seed, noise=0.01))
        boot = bootstrap_fit(fit, replicates=200, seed=seed)
        hits["alpha"] += covers(boot.alpha["mdm"], TRUTH["mdm"][1])
        hits["size"] += covers(boot.size_exponent["arm"], SIZE_EXPONENT)
        hits["multiple"] += covers(boot.compute_multiple, true_multiple())
        widths.append(boot.alpha["mdm"][1] - boot.alpha["mdm"][0])
        assert boot.alpha["mdm"][0] <= fit.objectives["mdm"].law.alpha <= boot.alpha["mdm"][1]
    assert min(hits.values()) >= 6, hits
    assert max(widths) < 0.5 * TRUTH["mdm"][1]  # informative, not [-inf, inf]


def test_intervals_shrink_with_the_noise():
    wide = bootstrap_fit(fit_results(synthetic(1, noise=0.02)), replicates=200, seed=0)
    narrow = bootstrap_fit(fit_results(synthetic(1, noise=0.002)), replicates=200, seed=0)
    width = [b.alpha["arm"][1] - b.alpha["arm"][0] for b in (wide, narrow)]
    assert width[1] < 0.3 * width[0]
    exact = bootstrap_fit(fit_results(synthetic(1, noise=0.0)), replicates=50, seed=0)
    assert exact.alpha["arm"] == pytest.approx((0.05, 0.05), abs=1e-9)


def test_seeded_and_reproducible():
    fit = fit_results(synthetic(3, noise=0.01))
    one = bootstrap_fit(fit, replicates=100, seed=7)
    two = bootstrap_fit(fit, replicates=100, seed=7)
    other = bootstrap_fit(fit, replicates=100, seed=8)
    assert one.alpha == two.alpha and one.compute_multiple == two.compute_multiple
    assert np.array_equal(one.samples["mdm.alpha"], two.samples["mdm.alpha"])
    assert other.alpha != one.alpha


def test_fit_command_prints_and_returns_the_intervals(tmp_path):
    path = tmp_path / "r.csv"
    rows = synthetic(0, noise=0.01)
    path.write_text(
        "objective,params,tokens,flops,loss\n"
        + "".join(f"{r.objective},{r.params},{r.tokens},{r.flops},{r.loss}\n" for r in rows)
    )

    def fit(*extra):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "scaling_law.py"), "fit", str(path), *extra],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])

    text, out = fit("--bootstrap", "200", "--seed", "5")
    assert "bootstrap (residual, 200 replicates, seed 5): 95% intervals" in text
    lo, hi = out["mdm"]["alpha_ci"]
    assert lo <= out["mdm"]["alpha"] <= hi
    assert out["bootstrap"]["seed"] == 5 and len(out["compute_multiple_ci"]) == 2
    assert fit("--bootstrap", "200", "--seed", "5")[1] == out  # same seed, same numbers
    _, bare = fit("--bootstrap", "0")
    assert "bootstrap" not in bare and "alpha_ci" not in bare["mdm"]
