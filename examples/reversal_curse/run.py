"""Reversal-curse experiment: an MDM and an ARM of the same size and compute, tested both ways,
under two protocols.

    python examples/reversal_curse/run.py [--quick | --smoke] [--protocol llada|berglund|both]
                                          [--seeds 0,1,2 | --seed N] [--out DIR]
                                          [--tokenizer word|byte]

- `llada` (`protocol_facts.build_pair_dataset`): "<A> | <B>" facts trained whole; forward =
  continue "<A> |"; reverse = MDM fills A in place before "| <B>", ARM continues "<B> |".
- `berglund` (`reversal_facts.build_dataset`): each model is pretrained on paraphrases of other
  people in both orders (`protocol_facts.build_pretrain_corpus`), then fine-tuned
  (`train.init_from`) on one-direction facts; queries "<x> is" in the trained and the other order.

For each protocol and seed (`OUT/<protocol>/seed<N>/`): the facts, a word-level sentencepiece
tokenizer, `mdm train` per model with identical overrides except `model.objective=mdm|arm`, and
`reversal_eval.py` on each checkpoint (exact match; Berglund also multiple choice by
likelihood). Prints a table per run and, as the last line, one JSON object per protocol with
the seeds and, per model and direction, the per-seed accuracies, their mean and std;
`OUT/results.json` holds the same plus every accuracy.

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

from protocol_facts import build_pair_dataset, build_pretrain_corpus  # noqa: E402
from reversal_facts import build_dataset  # noqa: E402

from megatron_mdm.utils import atomic_write_json, atomic_write_text  # noqa: E402


@dataclass(frozen=True)
class Preset:
    per_subset: int  # people in each test subset (name->description, description->name; pair)
    both: int  # people trained in both orders
    num_layers: int
    hidden_size: int
    heads: int
    steps: int  # training steps (fine-tuning steps after pretraining in the Berglund protocol)
    batch: int
    lr: float
    pretrain_people: int = 0  # Berglund protocol: other people of the pretraining corpus
    pretrain_per_person: int = 4  # paraphrases per pretraining person, half in each order
    pretrain_steps: int = 0


PRESETS = {
    # default: more people and a longer run (not timed on the 2-core CPU; see README)
    "full": Preset(30, 60, 4, 256, 4, 4000, 16, 1e-3, 200, 6, 4000),
    # the measured CPU configuration (docs/experiments.md): minutes per model on 2 cores
    "quick": Preset(8, 8, 4, 128, 4, 600, 32, 2e-3, 60, 4, 600),
    # a few seconds of training: checks the pipeline, not the science
    "smoke": Preset(3, 3, 2, 64, 4, 4, 4, 2e-3, 4, 2, 4),
}
PROTOCOLS = ("llada", "berglund")
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


def train_overrides(
    p: Preset, data: Path, out: Path, objective: str, seed: int, steps: int | None = None
) -> list[str]:
    """Everything that defines a run but the tokenizer; the two models differ only in
    `model.objective`. `steps`: default the preset's."""
    steps = p.steps if steps is None else steps
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
        f"train.max_steps={steps}",
        f"train.lr={p.lr}",
        f"train.min_lr={p.lr / 10}",
        f"train.warmup_steps={min(50, steps // 10)}",
        "train.weight_decay=0.0",  # memorising facts: no pull towards zero
        f"train.output_dir={out}",
        "checkpoint.resume=none",
        "checkpoint.save_interval=0",
        "checkpoint.keep_last=1",
        "logging.tensorboard=false",
        f"logging.interval={max(1, steps // 10)}",
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
    p: Preset,
    data: Path,
    out: Path,
    objective: str,
    seed: int,
    tokenizer: list[str],
    steps: int | None = None,
    init_from: Path | None = None,
) -> None:
    """`tokenizer`: `tokenizer_overrides(...)` plus `model.seq_length=`; `init_from`: the
    weights to fine-tune (fresh optimizer and schedule)."""
    cmd = [sys.executable, "-m", "megatron_mdm.cli", "train", str(ROOT / "configs/quickstart.yaml")]
    cmd += train_overrides(p, data, out, objective, seed, steps) + tokenizer
    if init_from is not None:
        cmd.append(f"train.init_from={init_from}")
    _run(cmd, f"train {objective} -> {out.name}")


def evaluate(ckpt: Path, dataset: Path, result: Path, cfg: float = 0.0, mc: int = 8) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "reversal_eval.py"),
        "--ckpt",
        str(ckpt),
        "--data",
        str(dataset),
    ]
    _run(cmd + ["--out", str(result), "--cfg", str(cfg), "--mc", str(mc)], f"evaluate {ckpt.name}")
    return json.loads(result.read_text())


def table(results: dict[str, dict]) -> str:
    keys = list(next(iter(results.values()))["accuracy"])
    lines = [f"{'accuracy':36s}" + "".join(f"{m:>8s}" for m in results)]
    for k in keys:
        lines.append(f"{k:36s}" + "".join(f"{r['accuracy'][k]:8.3f}" for r in results.values()))
    return "\n".join(lines)


def run_llada(p: Preset, seed: int, out: Path, objectives=("mdm", "arm")) -> dict:
    """The LLaDA protocol for one seed: "<A> | <B>" facts, both models trained on the whole
    texts, forward (continue "<A> |") and reverse (MDM: fill A in place; ARM: continue "<B> |")."""
    data = build_pair_dataset(seed, p.per_subset, p.both)
    text, dataset = data.write(out)
    print(
        f"[reversal_curse] llada seed {seed}: {len(data.people)} people, "
        f"{len(data.train_documents)} documents, {len(data.queries)} queries -> {out}",
        flush=True,
    )
    tokenizer = tokenizer_overrides("word", text, out) + [f"model.seq_length={SEQ_LENGTH['word']}"]
    for objective in objectives:
        train(p, text, out / objective, objective, seed, tokenizer)
    return {m: evaluate(out / m, dataset, out / f"eval_{m}.json", mc=0) for m in objectives}


def run_berglund(
    p: Preset, seed: int, out: Path, tokenizer_kind: str = "word", objectives=("mdm", "arm")
) -> dict:
    """The Berglund protocol for one seed: each model is pretrained on paraphrases of other
    people in both orders (`protocol_facts.build_pretrain_corpus`, when the preset has
    pretraining), then fine-tuned on the one-direction facts of `reversal_facts`."""
    data = build_dataset(seed, p.per_subset, p.both)
    text, dataset = data.write(out)
    taken = {x for person in data.people for x in (person.name, person.description)}
    pretrain_docs, _ = build_pretrain_corpus(seed, p.pretrain_people, p.pretrain_per_person, taken)
    pretrain = out / "pretrain.txt"
    atomic_write_text(pretrain, "".join(d + "\n" for d in pretrain_docs))
    vocab_text = out / "all_text.txt"  # one tokenizer for both stages
    atomic_write_text(vocab_text, pretrain.read_text() + text.read_text())
    print(
        f"[reversal_curse] berglund seed {seed}: {len(data.people)} people, "
        f"{len(data.train_documents)} fine-tuning documents, {len(pretrain_docs)} pretraining "
        f"documents ({p.pretrain_people} other people), {len(data.queries)} queries -> {out}",
        flush=True,
    )
    tokenizer = tokenizer_overrides(tokenizer_kind, vocab_text, out)
    tokenizer.append(f"model.seq_length={SEQ_LENGTH[tokenizer_kind]}")
    (out / "tokenizer_overrides.json").write_text(json.dumps(tokenizer) + "\n")
    for objective in objectives:
        base = None
        if p.pretrain_steps:
            base = out / f"pretrain_{objective}"
            train(p, pretrain, base, objective, seed, tokenizer, steps=p.pretrain_steps)
        train(p, text, out / objective, objective, seed, tokenizer, init_from=base)
    return {m: evaluate(out / m, dataset, out / f"eval_{m}.json") for m in objectives}


def summarize(per_seed: dict[int, dict]) -> dict:
    """{"seeds", "<model>_<direction>": {"per_seed", "mean", "std"}} over the seeds' results
    (std: sample standard deviation, 0 for one seed)."""
    out: dict = {"seeds": list(per_seed)}
    for model in ("mdm", "arm"):
        for direction in ("forward", "reverse"):
            values = [r[model]["accuracy"][direction] for r in per_seed.values() if model in r]
            if values:
                mean = sum(values) / len(values)
                var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
                out[f"{model}_{direction}"] = {
                    "per_seed": values,
                    "mean": round(mean, 4),
                    "std": round(var**0.5, 4),
                }
    return out


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma separated ints, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, not {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reversal curse: MDM vs ARM")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU-sized runs, minutes per model")
    size.add_argument("--smoke", action="store_true", help="seconds; checks the pipeline only")
    parser.add_argument(
        "--out", default=None, help="output directory (default runs/reversal_curse[-quick|-smoke])"
    )
    parser.add_argument(
        "--protocol", choices=[*PROTOCOLS, "both"], default="both", help="default: both"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the facts and of training")
    parser.add_argument(
        "--seeds", type=_parse_seeds, default=None, help="several seeds, e.g. 0,1,2 (over --seed)"
    )
    parser.add_argument(
        "--tokenizer",
        choices=["word", "byte"],
        default="word",
        help="berglund: word (sentencepiece word model of the facts, default) or byte",
    )
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = PRESETS[name]
    suffix = "" if name == "full" else f"-{name}"
    out = Path(args.out or ROOT / "runs" / f"reversal_curse{suffix}").resolve()
    seeds = args.seeds or [args.seed]
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    start = time.time()
    results: dict[str, dict[int, dict]] = {}
    for protocol in protocols:
        results[protocol] = {}
        for seed in seeds:
            where = out / protocol / f"seed{seed}"
            if protocol == "llada":
                results[protocol][seed] = run_llada(preset, seed, where)
            else:
                results[protocol][seed] = run_berglund(preset, seed, where, args.tokenizer)
            print(f"[reversal_curse] {protocol} seed {seed}:", flush=True)
            print(table(results[protocol][seed]), flush=True)
    summary = {protocol: summarize(r) for protocol, r in results.items()}
    record = {
        "preset": name,
        "seeds": seeds,
        "tokenizer": args.tokenizer,
        "config": preset.__dict__,
        "wall_s": round(time.time() - start, 1),
        "summary": summary,
        "accuracy": {
            protocol: {seed: {m: r[m]["accuracy"] for m in r} for seed, r in per_seed.items()}
            for protocol, per_seed in results.items()
        },
    }
    atomic_write_json(out / "results.json", record, indent=1)
    print(f"[reversal_curse] wall time {record['wall_s']} s; results in {out / 'results.json'}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
