"""Scaling-law tooling (`tools/scaling_law.py`, `megatron_mdm/scaling/`).

References are independent of the code under test: synthetic IsoFLOP data generated from known
laws (a Chinchilla-form L(N, D) whose optimum has a closed form, or parabolas whose minima follow
a chosen power law), compute budgets taken from the command line, and parameter counts of a
megatron-core model actually built from a generated config.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, fake_slurm, subprocess_env

from megatron_mdm.config import load_config
from megatron_mdm.model.accounting import non_embedding_params
from megatron_mdm.scaling.fit import fit_results
from megatron_mdm.scaling.results import Result

TOOL = ROOT / "tools" / "scaling_law.py"
HEADER = "objective,params,tokens,flops,loss"


def tool(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_csv(path: Path, rows: list[tuple]) -> Path:
    lines = [HEADER] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------- synthetic data


def parabola_rows(objective, a, alpha, budgets, offsets=(-1.3, -0.55, 0.25, 0.9, 1.6)):
    """IsoFLOP points whose exact minima are L* = a C^-alpha at N* = 0.3 C^0.45: loss is a
    parabola in ln N around (ln N*, L*). The offsets are asymmetric, so no sample sits on the
    minimum."""
    rows = []
    for c in budgets:
        n_star, l_star = 0.3 * c**0.45, a * c**-alpha
        for u in offsets:
            n = n_star * math.exp(u)
            rows.append((objective, n, c / (6 * n), c, l_star + 0.07 * u * u))
    return rows


# Chinchilla's fitted constants (Hoffmann et al. 2022), irreducible term dropped so the IsoFLOP
# minima follow an exact power law with alpha = a*b/(a+b).
A, B, EXP_A, EXP_B = 406.4, 410.7, 0.34, 0.28


def chinchilla_loss(n, d):
    return A / n**EXP_A + B / d**EXP_B


def chinchilla_rows(budgets, sizes):
    """A sweep as run for real: the same grid of sizes at every budget, keeping those within a
    factor e^1.3 of the budget's true optimum (a sweep centred on the minimum)."""
    rows = []
    for c in budgets:
        n_opt = (EXP_A * A / (EXP_B * B)) ** (1 / (EXP_A + EXP_B)) * (c / 6) ** (
            EXP_B / (EXP_A + EXP_B)
        )
        for n in sizes:
            if abs(math.log(n / n_opt)) <= 1.3:
                d = c / (6 * n)
                rows.append(("arm", n, d, c, chinchilla_loss(n, d)))
    return rows


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- fit


def test_fit_recovers_the_exponent_of_chinchilla_form_data(tmp_path):
    budgets = [1e18, 3e18, 1e19, 3e19, 1e20]
    sizes = np.geomspace(1e7, 1e10, 25)
    path = write_csv(tmp_path / "r.csv", chinchilla_rows(budgets, sizes))
    out = last_json(tool("fit", path))
    assert set(out) == {"arm", "bootstrap"}  # the intervals' settings (fit --bootstrap)
    expected = EXP_A * EXP_B / (EXP_A + EXP_B)  # 0.1535
    assert out["arm"]["alpha"] == pytest.approx(expected, rel=0.01)
    # The law must also reproduce the true optimal losses, not just their slope.
    for c in budgets:
        n = np.geomspace(1e6, 1e11, 20001)
        true_min = chinchilla_loss(n, c / (6 * n)).min()
        assert out["arm"]["a"] * c ** -out["arm"]["alpha"] == pytest.approx(true_min, rel=0.005)


def test_fit_recovers_an_exact_power_law_through_parabola_minima(tmp_path):
    budgets = [1e15, 1e16, 1e17, 1e18]
    fit = fit_results([Result(*r) for r in parabola_rows("mdm", 37.0, 0.071, budgets)])
    law = fit.objectives["mdm"].law
    assert law.alpha == pytest.approx(0.071, rel=1e-9)
    assert law.a == pytest.approx(37.0, rel=1e-8)
    for curve, c in zip(fit.objectives["mdm"].curves, budgets):
        assert curve.flops == pytest.approx(c)
        assert curve.n_opt == pytest.approx(0.3 * c**0.45, rel=1e-8)
        assert not curve.clamped
    assert fit.objectives["mdm"].n_opt_law.alpha == pytest.approx(-0.45, rel=1e-8)


def test_compute_multiple_on_constructed_laws(tmp_path):
    """The MDM's law is the ARM's shifted 16x in compute: it needs exactly 16x."""
    budgets = [1e17, 1e18, 1e19]
    arm_a, alpha = 60.0, 0.09
    rows = parabola_rows("arm", arm_a, alpha, budgets)
    rows += parabola_rows("mdm", arm_a * 16**alpha, alpha, budgets)
    out = last_json(tool("fit", write_csv(tmp_path / "r.csv", rows)))
    assert set(out) == {"mdm", "arm", "compute_multiple", "compute_multiple_ci", "bootstrap"}
    assert out["compute_multiple"] == pytest.approx(16.0, rel=1e-6)
    assert out["compute_multiple_ci"] == pytest.approx([16.0, 16.0], rel=1e-6)  # exact data


def test_compute_multiple_with_different_exponents(tmp_path):
    budgets = [1e17, 1e18, 1e19]
    rows = parabola_rows("arm", 40.0, 0.08, budgets) + parabola_rows("mdm", 70.0, 0.1, budgets)
    out = last_json(tool("fit", write_csv(tmp_path / "r.csv", rows)))
    # By hand: the ARM's loss at its largest budget, and where the MDM's law reaches it.
    target = 40.0 * 1e19**-0.08
    c_mdm = (70.0 / target) ** (1 / 0.1)
    assert out["compute_multiple"] == pytest.approx(c_mdm / 1e19, rel=1e-6)
    assert out["mdm"]["alpha"] == pytest.approx(0.1, rel=1e-8)
    assert out["arm"]["alpha"] == pytest.approx(0.08, rel=1e-8)


def test_budgets_grouped_when_flops_are_each_runs_own_6nd(tmp_path):
    """A CSV carrying each run's 6ND (within 5% of its budget) fits the same curves."""
    budgets = [1e16, 1e17, 1e18]
    rows = parabola_rows("arm", 30.0, 0.05, budgets)
    jitter = [0.96, 1.04, 0.99, 1.05, 0.95]
    shifted = [
        Result(o, n, d, c * jitter[i % 5], loss) for i, (o, n, d, c, loss) in enumerate(rows)
    ]
    fit = fit_results(shifted).objectives["arm"]
    assert [len(c.params) for c in fit.curves] == [5, 5, 5]
    assert fit.law.alpha == pytest.approx(0.05, abs=0.005)


def test_minimum_outside_the_sampled_sizes_is_clamped_and_reported(tmp_path):
    rows = []
    for c in (1e12, 1e13):
        for n in (1e4, 3e4, 1e5):  # loss still falling at the largest size
            rows.append(("mdm", n, c / (6 * n), c, 5.0 * c**-0.05 + 1.0 / math.log(n)))
    path = write_csv(tmp_path / "r.csv", rows)
    proc = tool("fit", path)
    out = last_json(proc)
    assert "clamped" in proc.stdout
    fit = fit_results([Result(*r) for r in rows]).objectives["mdm"]
    assert all(c.clamped and c.n_opt == pytest.approx(1e5) for c in fit.curves)
    assert set(out) == {"mdm", "bootstrap"}


def test_plot_writes_a_png(tmp_path):
    rows = parabola_rows("arm", 40.0, 0.08, [1e17, 1e18, 1e19])
    rows += parabola_rows("mdm", 70.0, 0.1, [1e17, 1e18, 1e19])
    png = tmp_path / "fig" / "isoflop.png"
    proc = tool("fit", write_csv(tmp_path / "r.csv", rows), "--plot", png)
    last_json(proc)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert sorted(p.name for p in png.parent.iterdir()) == ["isoflop.png"]  # no temp file left


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "file not found"),
        ("header", "header must be objective,params,tokens,flops,loss"),
        ("two_sizes", "too few points"),
        ("one_budget", "too few points"),
        ("nan_loss", "loss"),
        ("objective", "objective must be mdm or arm"),
    ],
)
def test_bad_csv_is_one_line_and_exit_2(tmp_path, case, needle):
    good = parabola_rows("mdm", 30.0, 0.05, [1e16, 1e17])
    path = tmp_path / "r.csv"
    if case == "header":
        path.write_text("objective,params,tokens,compute,loss\nmdm,1,1,1,1\n")
    elif case == "two_sizes":
        write_csv(path, [r for r in good if r[1] < 0.3 * r[3] ** 0.45])  # 2 sizes per budget
    elif case == "one_budget":
        write_csv(path, [r for r in good if r[3] == 1e16])
    elif case == "nan_loss":
        write_csv(path, [*good[:-1], (*good[-1][:4], "nan")])
    elif case == "objective":
        write_csv(path, [*good, ("gpt", 1, 1, 1, 1)])
    proc = tool("fit", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scaling_law.py fit: error:"), proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""


# -------------------------------------------------------------------------------- sweep

TINY_SIZES = "1x32x2,1x48x3,2x64x4,2x96x6,4x128x8"
TINY_BUDGETS = (1e11, 3e11, 1e12)


def _runs(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "manifest.json").read_text())["runs"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    proc = tool(
        "sweep",
        "--budgets",
        *TINY_BUDGETS,
        "--sizes",
        TINY_SIZES,
        "--out",
        out,
        "--seq-length",
        128,
        "--global-batch",
        16,
        "--micro-batch",
        16,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _check_budgets(sweep_dir: Path, budgets, objectives, sizes) -> None:
    """Every generated YAML, loaded by the project's loader, trains for 6ND within 5% of one
    of the budgets given on the command line, and every (objective, size, budget) is either
    a config or listed as skipped for being too short."""
    seen = set()
    for run in _runs(sweep_dir):
        cfg = load_config(run["config"])
        n = non_embedding_params(cfg.model)
        tokens = cfg.train.max_steps * cfg.train.global_batch_size * cfg.model.seq_length
        budget = next(c for c in budgets if f"-C{c:.0e}".replace("+", "") in run["name"])
        assert abs(6 * n * tokens / budget - 1) <= 0.05, run["name"]
        assert cfg.model.objective == run["objective"]
        assert cfg.train.eval_interval == cfg.train.max_steps and cfg.train.eval_iters >= 1
        assert Path(cfg.train.output_dir).name == run["name"]
        seen.add((run["objective"], run["size"], budget))
    skipped = json.loads((sweep_dir / "manifest.json").read_text())["skipped"]
    for s in skipped:
        assert "steps < min_steps" in s["reason"]
        seen.add((s["objective"], s["size"], s["budget"]))
    assert seen == {(o, s, c) for o in objectives for s in sizes for c in budgets}


def test_sweep_configs_hit_their_compute_budget(tiny_sweep):
    _check_budgets(tiny_sweep, TINY_BUDGETS, ("mdm", "arm"), TINY_SIZES.split(","))
    assert len(_runs(tiny_sweep)) >= 24


def test_sweep_of_smdm_family_members_hits_budgets(tmp_path):
    budgets = (1e17, 3e17, 1e18)
    proc = tool(
        "sweep",
        "--budgets",
        *budgets,
        "--sizes",
        "6M,19M,34M",
        "--objectives",
        "mdm",
        "--out",
        tmp_path / "smdm",
    )
    assert proc.returncode == 0, proc.stderr
    _check_budgets(tmp_path / "smdm", budgets, ("mdm",), ("6M", "19M", "34M"))
    cfg = load_config(_runs(tmp_path / "smdm")[0]["config"])
    assert (cfg.model.seq_length, cfg.train.global_batch_size) == (2048, 256)  # SMDM's recipe


def test_tokens_per_param_window(tmp_path):
    """--tokens-per-param keeps exactly the (size, budget) pairs whose D/N is in range."""
    budgets, window = (1e11, 1e12), (4.0, 400.0)
    out = tmp_path / "w"
    proc = tool("sweep", "--budgets", *budgets, "--sizes", TINY_SIZES, "--objectives", "arm",
                "--out", out, "--seq-length", 128, "--global-batch", 32,
                "--tokens-per-param", *window)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    kept = set()
    for run in _runs(out):
        cfg = load_config(run["config"])
        tokens = cfg.train.max_steps * cfg.train.global_batch_size * cfg.model.seq_length
        assert window[0] <= tokens / non_embedding_params(cfg.model) <= window[1]
        kept.add((run["size"], run["budget"]))
    # Everything left out is outside the window, by the same arithmetic on the sizes' counts.
    counts = {run["size"]: run["params"] for run in _runs(out)}
    for s in json.loads((out / "manifest.json").read_text())["skipped"]:
        assert "outside" in s["reason"]
        if s["size"] in counts:
            ratio = s["budget"] / (6 * counts[s["size"]] ** 2)
            assert not window[0] * 0.95 <= ratio <= window[1] * 1.05
    # By hand, D/N = C / (6 N^2): 1x32x2 61 and 614, 1x48x3 12 and 122, 2x64x4 1.0 and 9.7.
    assert kept == {("1x32x2", 1e11), ("1x48x3", 1e11), ("1x48x3", 1e12), ("2x64x4", 1e12)}


def test_param_count_matches_a_built_model(single_rank_world, tiny_sweep):
    """The non-embedding count behind every budget equals the parameters of the megatron-core
    model the config builds, minus the input embedding and output layer."""
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout

    run = next(r for r in _runs(tiny_sweep) if r["size"] == "2x64x4")
    cfg = load_config(run["config"])
    model = build_model(cfg, VocabLayout.build(256, None, 128, 1), on_gpu=False)
    counted = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name not in ("embedding.word_embeddings.weight", "output_layer.weight")
    )
    assert counted == non_embedding_params(cfg.model) == run["params"]


def test_bad_sweep_arguments_are_one_line(tmp_path):
    for args in (["--sizes", "7x"], ["--sizes", "123M"], ["--objectives", "gpt"]):
        proc = tool("sweep", "--budgets", 1e12, "--out", tmp_path / "x", *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scaling_law.py sweep: error:"), args
    proc = tool("sweep", "--budgets", 1e12, "--out", tmp_path / "y", "--override", "train.lr=-1")
    assert proc.returncode == 2 and "train.lr" in proc.stderr


# ----------------------------------------------------------------- collect, Slurm, run


def _finish(run: dict, loss: float, step: int | None = None) -> None:
    """A metrics.jsonl as the trainer writes it: training records and the validation record."""
    out = Path(run["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    step = run["steps"] if step is None else step
    with open(out / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": step, "loss": loss + 0.1, "lr": 1e-3}) + "\n")
        f.write(json.dumps({"step": step, "val_loss": loss}) + "\n")


def test_collect_then_fit(tmp_path):
    """sweep -> (runs' metrics.jsonl, losses from a known law) -> collect -> fit."""
    sizes = "1x32x2,1x48x3,2x64x4,2x96x6"
    budgets = (3e11, 1e12, 3e12)
    out = tmp_path / "sw"
    assert (
        tool(
            "sweep",
            "--budgets",
            *budgets,
            "--sizes",
            sizes,
            "--objectives",
            "mdm",
            "--out",
            out,
            "--global-batch",
            16,
        ).returncode
        == 0
    )
    runs = _runs(out)
    for run in runs[:-1]:  # minima at N* = 0.05 C^0.5, inside the sampled sizes
        c, n = run["budget"], run["params"]
        _finish(run, 20.0 * c**-0.06 + 0.05 * math.log(n / (0.05 * c**0.5)) ** 2)
    unfinished = runs[-1]  # evaluated before its last step
    _finish(unfinished, 9.0, step=unfinished["steps"] - 1)
    proc = tool("collect", out, "-o", tmp_path / "results.csv")
    assert proc.returncode == 0, proc.stderr
    assert f"not finished (no final val_loss): {unfinished['name']}" in proc.stderr
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == len(runs)
    assert {float(line.split(",")[3]) for line in lines[1:]} == set(budgets)
    proc = tool("fit", tmp_path / "results.csv")
    assert "clamped" not in proc.stdout
    fitted = last_json(proc)
    assert fitted["mdm"]["alpha"] == pytest.approx(0.06, rel=1e-4)


def test_slurm_array_script(tmp_path, tiny_sweep):
    runs = _runs(tiny_sweep)
    script = tmp_path / "array.sbatch"
    proc = tool("run", tiny_sweep, "--slurm", "--script", script, "--max-parallel", 4)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert f"#SBATCH --array=0-{len(runs) - 1}%4" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = fake_slurm(tmp_path, MDM_DRY_RUN="1", SLURM_ARRAY_TASK_ID="3", SLURM_NODEID="0")
    dry = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"megatron_mdm.cli train {runs[3]['config']} checkpoint.resume=auto" in dry.stdout


@pytest.mark.slow
def test_run_and_collect_real_training(tmp_path):
    """Three tiny `mdm train` runs on the synthetic corpus; a second `run` trains nothing."""
    out = tmp_path / "sw"
    proc = tool(
        "sweep",
        "--budgets",
        1.5e9,
        "--sizes",
        "1x32x2,1x48x3,2x64x4",
        "--objectives",
        "arm",
        "--out",
        out,
        "--seq-length",
        32,
        "--global-batch",
        4,
        "--eval-iters",
        2,
        "--override",
        "logging.tensorboard=false",
        "--override",
        "checkpoint.save_at_end=false",
    )
    assert proc.returncode == 0, proc.stderr
    first = tool("run", out, "--no-progress", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 run(s) trained" in first.stdout
    again = tool("run", out, "--no-progress")
    assert "0 run(s) trained" in again.stdout and "3 skipped" in again.stdout
    assert tool("collect", out).returncode == 0
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 4
    by_name = {r["name"]: r for r in _runs(out)}
    assert len(by_name) == 3
    for run, line in zip(_runs(out), lines[1:]):  # the CSV holds what the trainer logged
        logged = [json.loads(s) for s in open(Path(run["output_dir"]) / "metrics.jsonl")]
        val = [r for r in logged if "val_loss" in r]
        assert val[-1]["step"] == run["steps"]
        assert float(line.split(",")[4]) == pytest.approx(val[-1]["val_loss"], abs=1e-6)
        assert math.isfinite(val[-1]["val_loss"])
