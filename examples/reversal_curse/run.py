"""Reversal-curse experiment: an MDM and an ARM of the same size and compute, tested both ways.

    python examples/reversal_curse/run.py [--quick | --smoke] [--out DIR] [--seed N]
                                          [--tokenizer word|byte]

1. `reversal_facts.build_dataset(seed)`: fictitious people in three subsets; writes
   `OUT/train.txt` (one fact per line) and `OUT/dataset.json` (people, queries); a word-level
   sentencepiece tokenizer of `train.txt` (default) goes to `OUT/tokenizer/`.
2. `mdm train` twice on `train.txt` with identical overrides except `model.objective=mdm|arm`:
   same model shape, seed, token stream, batch and steps (`OUT/mdm`, `OUT/arm`).
3. `reversal_eval.py` on each checkpoint: exact-match accuracy of the "forward" queries (the
   order each fact was trained in) and the "reverse" queries (the order never trained for that
   person), and multiple-choice accuracy by likelihood.
4. Prints a table and, as the last line, {"mdm_forward", "mdm_reverse", "arm_forward",
   "arm_reverse"}; `OUT/results.json` holds the same plus per-subset accuracies.

Training and evaluation run as subprocesses (one process each), so each gets a fresh
torch.distributed world.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from reversal_facts import build_dataset  # noqa: E402

from megatron_mdm.utils import atomic_write_json  # noqa: E402


@dataclass(frozen=True)
class Preset:
    per_subset: int  # people in each test subset (name->description, description->name)
    both: int  # people trained in both orders
    num_layers: int
    hidden_size: int
    heads: int
    steps: int
    batch: int
    lr: float


PRESETS = {
    # default: more people and a longer run (not timed on the 2-core CPU; see README)
    "full": Preset(30, 60, 4, 256, 4, 4000, 16, 1e-3),
    # the measured CPU configuration: < 15 minutes on 2 idle cores for both models
    "quick": Preset(15, 15, 4, 128, 4, 2000, 32, 2e-3),
    # a few seconds of training: checks the pipeline, not the science
    "smoke": Preset(3, 3, 2, 64, 4, 4, 4, 2e-3),
}
# Facts are ~10 words (~60 bytes): room for a few documents per packed training sequence.
SEQ_LENGTH = {"word": 32, "byte": 128}


def word_tokenizer(text: Path, out_dir: Path) -> Path:
    """A word-level sentencepiece model of the training documents: one token per word (names
    are two tokens, descriptions six), every word of every query included (each person has a
    training document). Vocabulary: the distinct words, the 4 specials (unk, bos, eos, pad) and
    the 4 whitespace pieces `train_sentencepiece` always adds (newline, tab, with and without
    the word-boundary mark). Checked: no training document contains an unknown token."""
    from megatron_mdm.data.sentencepiece_training import train_sentencepiece
    from megatron_mdm.data.tokenizers import build_tokenizer

    lines = text.read_text().splitlines()
    words = {w for line in lines for w in line.split()}
    model = train_sentencepiece([str(text)], str(out_dir / "word"), len(words) + 8, "word")
    tok = build_tokenizer("sentencepiece", str(model))
    unknown = [line for line in lines if 0 in tok.encode(line)]  # id 0: <unk>
    if unknown:
        raise SystemExit(f"run.py: error: {model} leaves words unknown in {unknown[0]!r}")
    return model


def tokenizer_overrides(kind: str, text: Path, out: Path) -> list[str]:
    if kind == "byte":
        return ["data.tokenizer.type=byte"]
    model = word_tokenizer(text, out / "tokenizer")
    return ["data.tokenizer.type=sentencepiece", f"data.tokenizer.model={model}"]


def train_overrides(p: Preset, data: Path, out: Path, objective: str, seed: int) -> list[str]:
    """Everything that defines a run but the tokenizer; the two models differ only in
    `model.objective`."""
    return [
        f"model.objective={objective}",
        f"model.num_layers={p.num_layers}",
        f"model.hidden_size={p.hidden_size}",
        f"model.num_attention_heads={p.heads}",
        f"model.ffn_hidden_size={4 * p.hidden_size}",
        f"data.text_file={data}",
        "data.split=1,0,0",  # every fact is training data; the test queries are held out by design
        f"train.seed={seed}",
        f"train.micro_batch_size={p.batch}",
        f"train.global_batch_size={p.batch}",
        f"train.max_steps={p.steps}",
        f"train.lr={p.lr}",
        f"train.min_lr={p.lr / 10}",
        f"train.warmup_steps={min(50, p.steps // 10)}",
        "train.weight_decay=0.0",  # memorising facts: no pull towards zero
        f"train.output_dir={out}",
        "checkpoint.resume=none",
        "checkpoint.save_interval=0",
        "checkpoint.keep_last=1",
        "logging.tensorboard=false",
        f"logging.interval={max(1, p.steps // 10)}",
    ]


def _env() -> dict:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = str(s.getsockname()[1])
    env["MASTER_ADDR"] = "127.0.0.1"
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _run(cmd: list[str], what: str) -> None:
    """A subprocess whose progress bars reach the terminal; one clear line when it fails."""
    print(f"[reversal_curse] {what}: {' '.join(cmd[2:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=_env()).returncode != 0:
        raise SystemExit(f"run.py: error: {what} failed (command above)")


def train(
    p: Preset, data: Path, out: Path, objective: str, seed: int, tokenizer: list[str]
) -> None:
    """`tokenizer`: `tokenizer_overrides(...)` plus `model.seq_length=`."""
    cmd = [sys.executable, "-m", "megatron_mdm.cli", "train", str(ROOT / "configs/quickstart.yaml")]
    _run(cmd + train_overrides(p, data, out, objective, seed) + tokenizer, f"train {objective}")


def evaluate(ckpt: Path, dataset: Path, result: Path, cfg: float = 0.0) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "reversal_eval.py"),
        "--ckpt",
        str(ckpt),
        "--data",
        str(dataset),
    ]
    _run(cmd + ["--out", str(result), "--cfg", str(cfg)], f"evaluate {ckpt.name}")
    return json.loads(result.read_text())


def table(results: dict[str, dict]) -> str:
    keys = list(next(iter(results.values()))["accuracy"])
    lines = [f"{'accuracy':36s}" + "".join(f"{m:>8s}" for m in results)]
    for k in keys:
        lines.append(f"{k:36s}" + "".join(f"{r['accuracy'][k]:8.3f}" for r in results.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reversal curse: MDM vs ARM")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU-sized run, < 15 minutes")
    size.add_argument("--smoke", action="store_true", help="seconds; checks the pipeline only")
    parser.add_argument(
        "--out", default=None, help="output directory (default runs/reversal_curse[-quick|-smoke])"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the facts and of training")
    parser.add_argument(
        "--tokenizer",
        choices=["word", "byte"],
        default="word",
        help="word: sentencepiece word model of the facts (default); byte: the byte tokenizer",
    )
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = PRESETS[name]
    suffix = "" if name == "full" else f"-{name}"
    out = Path(args.out or ROOT / "runs" / f"reversal_curse{suffix}").resolve()
    start = time.time()

    data = build_dataset(args.seed, preset.per_subset, preset.both)
    text, dataset = data.write(out)
    print(
        f"[reversal_curse] {len(data.people)} people, {len(data.train_documents)} training "
        f"documents, {len(data.queries)} test queries -> {out}",
        flush=True,
    )
    tokenizer = tokenizer_overrides(args.tokenizer, text, out)
    tokenizer.append(f"model.seq_length={SEQ_LENGTH[args.tokenizer]}")
    (out / "tokenizer_overrides.json").write_text(json.dumps(tokenizer) + "\n")
    results = {}
    for objective in ("mdm", "arm"):
        train(preset, text, out / objective, objective, args.seed, tokenizer)
    for objective in ("mdm", "arm"):
        results[objective] = evaluate(out / objective, dataset, out / f"eval_{objective}.json")

    print(table(results))
    for objective, r in results.items():
        for row in r["predictions"][:4]:
            print(f"  {objective} {row['direction']:7s} {row['prompt']!r} -> {row['prediction']!r}")
    summary = {
        f"{m}_{d}": results[m]["accuracy"][d]
        for m in ("mdm", "arm")
        for d in ("forward", "reverse")
    }
    record = {
        "preset": name,
        "seed": args.seed,
        "tokenizer": args.tokenizer,
        "config": preset.__dict__,
        "wall_s": round(time.time() - start, 1),
        "summary": summary,
        "accuracy": {m: r["accuracy"] for m, r in results.items()},
    }
    atomic_write_json(out / "results.json", record, indent=1)
    print(f"[reversal_curse] wall time {record['wall_s']} s; results in {out / 'results.json'}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
