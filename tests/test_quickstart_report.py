"""`tools/quickstart_report.py` (what `make quickstart` prints after the samples) and the
synthetic corpus's word list it measures against. No training: given text only."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_mdm.data.synthetic_corpus import generate_corpus, vocabulary

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "quickstart_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("quickstart_report", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lexicon", ["standard", "small"])
def test_vocabulary_covers_the_corpus_and_nothing_else(lexicon):
    """Every word of many seeds' documents is in vocabulary(), and every listed word occurs."""
    seen = set()
    for seed in range(3):
        for doc in generate_corpus(1000, seed=seed, lexicon=lexicon):
            seen.update(w.strip('.,?:"').lower() for w in doc.split())
    words = vocabulary(lexicon)
    assert seen <= words, sorted(seen - words)
    assert words <= seen, sorted(words - seen)  # no dead entries that would inflate a match
    assert all(w == w.lower() and w.isalpha() for w in words)


def test_small_lexicon_is_a_subset_with_the_same_grammar():
    small, standard = vocabulary("small"), vocabulary("standard")
    assert small < standard and len(small) == 48 and len(standard) == 169
    docs = generate_corpus(200, seed=0, lexicon="small")
    assert docs != generate_corpus(200, seed=0)
    text = " ".join(docs)
    assert "?" in text and '"' in text and ": " in text  # the same templates
    with pytest.raises(ValueError, match="lexicon"):
        generate_corpus(1, lexicon="tiny")


def test_vocabulary_match_counts_words(report):
    words = frozenset({"the", "king", "said", "slept"})
    # "kinng", "eeee" and "--" (not the corpus's punctuation) miss; '"' alone is no word;
    # case and surrounding punctuation are ignored
    text = 'The kinng said: "eeee slept." " King, --'
    assert report.vocabulary_match([text], words) == (4, 7)
    assert report.vocabulary_match(["", "   "], words) == (0, 0)
    assert report.vocabulary_match(["the king", "said xx"], words) == (3, 4)


def test_split_samples_strips_markers_and_prompt(report):
    printed = "[0] P: the king\n[1] P: a dog\nsang\n[2] P: \n"
    assert report.split_samples(printed, "P: ") == ["the king", "a dog\nsang", ""]
    assert report.split_samples("no samples here\n") == []


def test_sparkline_shape(report):
    line = report.sparkline([4.0, 3.0, 2.0, 1.0])
    assert line == "█▆▃▁"
    assert len(report.sparkline([float(i) for i in range(100)], width=10)) == 10
    assert report.sparkline([2.0, 2.0]) == "▁▁"
    assert report.sparkline([]) == ""


def test_cli_prints_samples_fraction_and_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 10 * i, "loss": 5.0 - i} for i in range(1, 4)] + [
        {"step": 30, "val_loss": 9}
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    samples = tmp_path / "samples.txt"
    samples.write_text("[0] The old king said: the dog slept.\n[1] The old king said: qq the\n")
    prompt = ["--prompt", "The old king said: "]
    cmd = [sys.executable, str(TOOL), str(run), str(samples), *prompt, "--lexicon", "standard"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:2] == samples.read_text().splitlines()
    assert out[2] == "vocabulary match: 0.80 (4 of 5 words)"
    assert out[3] == "loss (step 10 -> 30): 4.00 █▅▁ 2.00"
    missing = subprocess.run(
        [*cmd[:2], str(tmp_path / "none"), str(samples), "--lexicon", "small"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert (
        missing.stderr.startswith("quickstart_report: error:") and "metrics.jsonl" in missing.stderr
    )


def test_lexicon_comes_from_the_run(tmp_path, report):
    """Without --lexicon the words are those of the run's data.synthetic (its meta.yaml)."""
    step = tmp_path / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_0000010\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 2.0}\n')
    samples = tmp_path / "s.txt"
    samples.write_text("[0] the bridge\n")  # "bridge": standard lexicon only
    for lexicon, line in (("small", "0.50 (1 of 2"), ("standard", "1.00 (2 of 2")):
        (step / "meta.yaml").write_text(f"config:\n  data:\n    synthetic: {lexicon}\n")
        assert f"vocabulary match: {line} words)" in report.report(tmp_path, samples, "")
    (step / "meta.yaml").write_text("config:\n  data:\n    text_file: x.txt\n")
    with pytest.raises(ValueError, match="synthetic"):
        report.report(tmp_path, samples, "")


def test_idle_cores_suggests_one_thread_when_every_core_is_busy():
    """`make quickstart`'s thread count: with a spinning process per core, no core is idle, so
    the suggestion is 1 (the load average, a minute behind, would not see these spinners)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        time.sleep(0.5)
        busy = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "idle_cores.py")],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert busy.stdout.strip() == "1"
    capped = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "idle_cores.py"), "--max", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert capped.stdout.strip() == "1"
