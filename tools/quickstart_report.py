"""What `make quickstart` shows after training: the samples, how many of their words are words of
the synthetic corpus, and the loss curve as a text sparkline.

    python tools/quickstart_report.py RUN_DIR SAMPLES.txt [--prompt TEXT] [--lexicon small]

SAMPLES.txt is what `mdm generate --num-samples N` printed (lines `[i] <prompt><completion>`).
Only the completions count (the prompt is stripped when given): a completion's whitespace-
separated words, lower-cased and stripped of surrounding punctuation, are looked up in the
corpus generator's own word list (`megatron_mdm.data.synthetic_corpus.vocabulary`) of the
lexicon the run trained on (`data.synthetic` in the latest checkpoint's meta.yaml, unless
`--lexicon` names one); a piece that is punctuation only is not a word. The loss curve is `RUN_DIR/metrics.jsonl`'s `loss` per
logged step. Prints the samples, then one line `vocabulary match: 0.xx (N of M words)`, then
the sparkline. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _checkout, also under -P / -I
from _checkout import use_checkout  # noqa: E402

use_checkout()

from megatron_mdm.data.synthetic_corpus import vocabulary  # noqa: E402

PUNCTUATION = ".,;:!?\"'()"
BARS = "▁▂▃▄▅▆▇█"
_SAMPLE_START = re.compile(r"^\[\d+\] ", re.MULTILINE)


def split_samples(printed: str, prompt: str = "") -> list[str]:
    """The completions in `mdm generate`'s output: the text after each `[i] ` marker (a sample
    may span lines), without the leading `prompt`."""
    pieces = _SAMPLE_START.split(printed)[1:]
    return [p.rstrip("\n").removeprefix(prompt) for p in pieces]


def vocabulary_match(texts: Iterable[str], words: frozenset[str]) -> tuple[int, int]:
    """(words of `texts` in `words`, words of `texts`): whitespace-separated pieces, lower-cased
    and stripped of surrounding punctuation; pieces that are punctuation only are skipped."""
    hits = total = 0
    for text in texts:
        for piece in text.split():
            word = piece.strip(PUNCTUATION).lower()
            if word:
                total += 1
                hits += word in words
    return hits, total


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """`values` as block characters (lowest ▁, highest █), averaged into at most `width` bins."""
    if not values:
        return ""
    bins = min(width, len(values))
    means = []
    for i in range(bins):
        chunk = values[i * len(values) // bins : (i + 1) * len(values) // bins]
        means.append(sum(chunk) / len(chunk))
    lo, hi = min(means), max(means)
    span = hi - lo or 1.0
    return "".join(BARS[round((m - lo) / span * (len(BARS) - 1))] for m in means)


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training record in `run_dir/metrics.jsonl`."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (train first)")
    curve = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if isinstance(record.get("loss"), (int, float)):
            curve.append((int(record["step"]), float(record["loss"])))
    return curve


def run_lexicon(run_dir: Path) -> str:
    """`data.synthetic` of the run's latest checkpoint (its meta.yaml config)."""
    import yaml

    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{latest} does not exist (train first, or pass --lexicon)")
    meta = latest.parent / latest.read_text().strip() / "meta.yaml"
    data = (yaml.safe_load(meta.read_text()) or {}).get("config", {}).get("data", {})
    if data.get("text_file") or data.get("blend"):
        raise ValueError(f"{meta}: the run did not train on the synthetic corpus")
    return data.get("synthetic", "standard")


def report(run_dir: Path, samples_file: Path, prompt: str, lexicon: str | None = None) -> str:
    printed = samples_file.read_text(encoding="utf-8")
    texts = split_samples(printed, prompt)
    if not texts:
        raise ValueError(f"{samples_file}: no samples (lines starting with '[0] ')")
    words = vocabulary(lexicon or run_lexicon(run_dir))
    hits, total = vocabulary_match(texts, words)
    fraction = hits / total if total else 0.0
    curve = loss_curve(run_dir)
    lines = [printed.rstrip("\n"), f"vocabulary match: {fraction:.2f} ({hits} of {total} words)"]
    if curve:
        (first_step, first), (last_step, last) = curve[0], curve[-1]
        losses = [loss for _, loss in curve]
        lines.append(
            f"loss (step {first_step} -> {last_step}): {first:.2f} {sparkline(losses)} {last:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the training output_dir (metrics.jsonl)")
    parser.add_argument("samples", type=Path, help="what `mdm generate` printed")
    parser.add_argument("--prompt", default="", help="the prompt, stripped from each sample")
    parser.add_argument(
        "--lexicon", choices=["standard", "small"], help="default: the run's data.synthetic"
    )
    args = parser.parse_args(argv)
    try:
        print(report(args.run_dir, args.samples, args.prompt, args.lexicon))
    except (OSError, ValueError) as exc:
        print(f"quickstart_report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
