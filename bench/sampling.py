"""Sampler speed on one model: LLaDA vs Fast-dLLM decoding vs MDLM vs ARM with/without KV cache.

    python bench/sampling.py [--model words|quickstart | --ckpt DIR] [--prompts 8]
        [--gen-length 64] [--block-length 16] [--threshold 0.9 0.7] [--out FILE.json]

`--model random --vocab N`: no training, the quickstart shape with random weights and an output
layer of N ids (the output layer's share of the work grows with N; the byte tokenizer uses 259).
Also reported: `llada` against a plain loop of LLaDA's published algorithm on the same weights
(logits of every position and a float64 softmax over the vocabulary every step; its answers must
be identical), and tokens/s of all prompts at batch 8 vs batch 1 (`inference.batching`;
`--no-batch` skips it). `--only NAME...` times only those samplers besides llada.

Without `--ckpt` a model is trained first into `--workdir/MODEL` (once; later runs reuse it):
`words` (default): the quickstart architecture (4.4M parameters, byte tokenizer) for 1000 steps
on lines of random words from a 16-word list (10-15 minutes on one CPU core); `quickstart`: the
quickstart run itself (150 steps on the synthetic corpus), which is too unsure of its tokens for
a confidence threshold to fire.

Every sampler runs the same plain-torch model (`from_training_checkpoint_torch`), one prompt at a
time (batch 1), greedy, `steps = gen_length` (one token per step, LLaDA's standard setting).
Prompts: the first `--prompt-bytes` bytes of fresh `words` lines, of held-out synthetic-corpus
documents (quickstart, `--ckpt`), or of the lines of `--prompt-file`.
Per sampler (per prompt the fastest of `--repeats` runs, samplers interleaved): tokens/s, speed
relative to `llada`, model calls and positions run through the model per generated token, and
agreement with `llada`'s answer: the fraction of generated tokens that are identical, and the
fraction of prompts whose whole answer is identical (the accuracy cost of the approximations;
`fast none` with no threshold is LLaDA itself).
The ARM rows time the same weights under a causal mask, generating exactly `gen_length` tokens
(no EOS stop): a speed comparison at equal model size and length, not a quality one.
On CPU report ratios, not absolute figures (shared cores, no accelerator).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from megatron_mdm.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


# The `words` corpus: lines of 10-20 words drawn from 16 fixed words. A small model learns the
# spelling in minutes and is then confident inside a word and unsure at its first letter, the
# regime where confidence-threshold decoding pays; the quickstart model after 150 steps is
# confident almost nowhere, so a threshold changes nothing there.
WORDS = (
    "apple", "bridge", "candle", "dragon", "engine", "forest", "garden", "harbor", "island",
    "jungle", "kettle", "lantern", "meadow", "needle", "orange", "pepper",
)  # fmt: skip
MODELS = {  # name -> (extra overrides of configs/quickstart.yaml, corpus writer or None)
    "quickstart": ([], None),
    "words": (["train.max_steps=1000"], "words"),
    "random": ([], None),  # not trained: random weights (`random_model`)
}


def words_lines(count: int, seed: int, length: tuple[int, int]) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*length))) for _ in range(count)]


def train_model(name: str, workdir: Path) -> Path:
    """Train `name` (MODELS) into workdir/name unless a checkpoint is already there."""
    run = workdir / name
    if not (run / "checkpoints" / "latest").exists():
        overrides, corpus = MODELS[name]
        if corpus == "words":
            text = workdir / "words.txt"
            workdir.mkdir(parents=True, exist_ok=True)
            text.write_text("\n".join(words_lines(4000, 0, (10, 20))) + "\n")
            overrides = [*overrides, f"data.text_file={text}"]
        cmd = [sys.executable, "-m", "megatron_mdm.cli", "train"]
        cmd += [str(ROOT / "configs" / "quickstart.yaml"), f"train.output_dir={run}"]
        cmd += ["logging.tensorboard=false", *overrides]
        subprocess.run(cmd, cwd=ROOT, check=True)
    return run


def prompt_ids(tokenizer, args) -> list[list[int]]:
    """The first `--prompt-bytes` characters of `--prompts` lines of `--prompt-file`, of fresh
    `words` lines (that model), or of held-out synthetic-corpus documents (another seed than
    the quickstart's training data)."""
    if args.prompt_file:
        docs = Path(args.prompt_file).read_text().splitlines()
    elif args.model == "words" and not args.ckpt:
        docs = words_lines(args.prompts * 2, 1, (12, 12))
    else:
        from megatron_mdm.data.synthetic_corpus import generate_corpus

        docs = generate_corpus(num_documents=args.prompts * 4, seed=99)
    docs = [d for d in docs if len(d) >= args.prompt_bytes]
    return [tokenizer.encode(d[: args.prompt_bytes]) for d in docs[: args.prompts]]


@torch.no_grad()
def plain_llada(model, prompt, mask_id, gen_length, steps, block_length, stats) -> torch.Tensor:
    """LLaDA's published sampling loop (greedy, low-confidence remasking) written out plainly,
    sharing no code with `diffusion.sampling`: every step runs the whole sequence through the
    model, takes the logits of every position, a float64 softmax over the full vocabulary, and
    a top-k per row."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), mask_id, dtype=torch.long)
    x[:, :plen] = prompt
    blocks = gen_length // block_length
    per_block = steps // blocks
    calls = 0
    for b in range(blocks):
        start, end = plen + b * block_length, plen + (b + 1) * block_length
        block_masks = (x[:, start:end] == mask_id).sum(1, keepdim=True)
        transfer = (block_masks // per_block).repeat(1, per_block)
        for row in range(batch):
            transfer[row, : int(block_masks[row, 0] % per_block)] += 1
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model(input_ids=x).logits
            calls += 1
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, end:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            chosen = torch.zeros_like(x0, dtype=torch.bool)
            for row in range(batch):
                k = int(transfer[row, i])
                if k:
                    chosen[row, torch.topk(confidence[row], k).indices] = True
            x[chosen] = x0[chosen]
    stats["model_calls"] = calls
    return x


def sampler_table(mdm, arm, args) -> dict:
    """name -> fn(prompt [1, P], stats) -> ids [1, P + gen_length], each through
    `inference.generate` with its `SamplingConfig`."""
    from megatron_mdm.inference.generate import generate
    from megatron_mdm.inference.sampling_config import SamplingConfig

    n = args.gen_length
    base = SamplingConfig(gen_length=n, steps=n, block_length=args.block_length)
    configs = {"llada": (mdm, base.replace(sampler="llada"))}
    configs["mdlm (cache)"] = (mdm, base.replace(sampler="mdlm"))
    for cache in ("none", "prefix", "dual"):
        for threshold in (None, *args.threshold):
            if cache == "none" and threshold is None:
                continue  # that is llada
            name = f"fast {cache}" + (f" t={threshold}" if threshold is not None else "")
            configs[name] = (mdm, base.replace(sampler="fast", cache=cache, threshold=threshold))
    arm_base = base.replace(sampler="arm", stop_at_eos=False)
    configs["arm (no cache)"] = (arm, arm_base.replace(cache="none"))
    configs["arm + KV cache"] = (arm, arm_base)

    def runner(model, config):
        return lambda p, stats: generate(model, p, config, stats)

    table = {name: runner(model, config) for name, (model, config) in configs.items()}
    table["llada plain loop (reference)"] = lambda p, stats: plain_llada(
        mdm.cached_model, p, mdm.mask_id, n, n, args.block_length or n, stats
    )
    return table


def batch_speed(mdm, arm, prompts, args) -> dict:
    """tokens/s of whole prompt lists at batch 8 and batch 1 (`inference.batching`), and whether
    every completion is the same; the fastest of `--repeats`."""
    from megatron_mdm.inference.batching import generate_many
    from megatron_mdm.inference.sampling_config import SamplingConfig

    n = args.gen_length
    base = SamplingConfig(gen_length=n, steps=n, block_length=args.block_length, stop_at_eos=False)
    configs = {
        "llada": (mdm, base.replace(sampler="llada")),
        "fast dual t=0.9": (mdm, base.replace(sampler="fast", cache="dual", threshold=0.9)),
        "arm + KV cache": (arm, base.replace(sampler="arm")),
    }
    out = {}
    for name, (model, config) in configs.items():
        seconds, answers = {}, {}
        generate_many(model, prompts[:1], config, 1)  # warm-up
        for size in (1, 8):
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                done = generate_many(model, prompts, config, size)
                best = min(best, time.perf_counter() - start)
            seconds[size], answers[size] = best, [c.ids for c in done]
        out[name] = {
            "batch8_vs_batch1": seconds[1] / seconds[8],
            "identical": answers[1] == answers[8],
        }
        print(f"{name}: batch 8 {out[name]['batch8_vs_batch1']:.2f}x batch 1", file=sys.stderr)
    return out


def random_model(args, objective: str | None = None):
    """The quickstart shape (4.4M parameters + the output layer) with random weights and a
    `--vocab`-sized output layer (the byte tokenizer uses its first 259 ids): the regime of
    the output layer's cost without training a model."""
    from megatron_mdm.config import load_config
    from megatron_mdm.convert import layouts
    from megatron_mdm.convert.hf_modeling.configuration_mdm import MDMConfig
    from megatron_mdm.convert.hf_modeling.modeling_mdm import MDMForMaskedLM
    from megatron_mdm.data.tokenizers import ByteLevelTokenizer
    from megatron_mdm.inference.loading import InferenceModel, SelectiveModel
    from megatron_mdm.model.vocab import VocabLayout

    cfg = load_config(str(ROOT / "configs" / "quickstart.yaml"), [])
    vocab = VocabLayout.build(max(args.vocab, 259), None, 128, 1)
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    config = layouts.hf_config(shape, layouts.config_meta(cfg, vocab, eos_token_id=257))
    config["objective"] = objective or "mdm"
    torch.manual_seed(0)
    model = MDMForMaskedLM(MDMConfig(**config)).eval()
    cpu = torch.device("cpu")
    return InferenceModel(
        SelectiveModel(model, cpu, hf=True),
        ByteLevelTokenizer(),
        vocab.mask_id,
        257,
        config["objective"],
        cpu,
        load_cached_model=lambda: model,
        max_length=cfg.model.seq_length,
    )


def run(args) -> dict:
    from megatron_mdm.inference.loading import from_training_checkpoint_torch

    if args.model == "random" and not args.ckpt:
        ckpt = f"random weights, vocab {args.vocab}"
        mdm, arm = random_model(args), random_model(args, "arm")
    else:
        ckpt = args.ckpt or train_model(args.model, Path(args.workdir))
        mdm = from_training_checkpoint_torch(ckpt)
        arm = from_training_checkpoint_torch(ckpt, objective="arm")
    prompts = prompt_ids(mdm.tokenizer, args)
    table = sampler_table(mdm, arm, args)
    if args.only:
        keep = {"llada", "llada plain loop (reference)", *args.only}
        table = {name: fn for name, fn in table.items() if name in keep}
    n = args.gen_length
    for sample in table.values():
        sample(torch.tensor([prompts[0]]), {})  # warm-up
    # seconds[name][prompt]: the fastest of the repeats, samplers interleaved prompt by prompt
    # so that the load of a shared machine falls on all of them alike
    seconds = {name: [float("inf")] * len(prompts) for name in table}
    answers = {name: [None] * len(prompts) for name in table}
    calls = {name: [0] * len(prompts) for name in table}
    positions = {name: [0] * len(prompts) for name in table}
    for _ in range(args.repeats):
        for i, ids in enumerate(prompts):
            for name, sample in table.items():
                stats = {}
                start = time.perf_counter()
                out = sample(torch.tensor([ids]), stats)
                seconds[name][i] = min(seconds[name][i], time.perf_counter() - start)
                answers[name][i] = out[0, len(ids) :].tolist()
                calls[name][i] = stats["model_calls"]
                positions[name][i] = stats.get("positions", 0)
    results = {}
    for name in table:
        total = len(prompts) * n
        results[name] = {
            "tokens_per_s": total / sum(seconds[name]),
            "calls_per_token": sum(calls[name]) / total,
            # fast only: positions run through the model (what a cache saves)
            "positions_per_token": sum(positions[name]) / total if positions[name][0] else None,
        }
        print(f"{name}: {results[name]['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    plain = results["llada plain loop (reference)"]["tokens_per_s"]
    results["llada"]["speedup_vs_plain_loop"] = results["llada"]["tokens_per_s"] / plain
    base = results["llada"]["tokens_per_s"]
    for name, row in results.items():
        row["speedup_vs_llada"] = row["tokens_per_s"] / base
        if name.startswith("arm"):
            continue

        pairs = list(zip(answers[name], answers["llada"]))
        same = sum(sum(a == b for a, b in zip(x, y)) for x, y in pairs)
        row["token_agreement"] = same / (len(pairs) * n)
        row["answer_agreement"] = sum(x == y for x, y in pairs) / len(pairs)
    return {
        "ckpt": str(ckpt),
        "model": None if args.ckpt else args.model,
        "prompt_file": args.prompt_file,
        "prompts": len(prompts),
        "gen_length": n,
        "block_length": args.block_length,
        "steps": n,
        "threshold": args.threshold,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": str(mdm.device),
        "results": results,
        "batch": batch_speed(mdm, arm, prompts, args) if args.batch else None,
        "sample": mdm.tokenizer.decode(prompts[0] + answers["llada"][0]),
    }


def markdown(report: dict) -> str:
    lines = [
        "| sampler | speed vs llada | model calls / token | tokens agreeing with llada "
        "| answers identical to llada |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in report["results"].items():
        agree = row.get("token_agreement")
        whole = row.get("answer_agreement")
        lines.append(
            f"| {name} | {row['speedup_vs_llada']:.2f}x | {row['calls_per_token']:.2f} | "
            + ("-" if agree is None else f"{agree:.1%}")
            + " | "
            + ("-" if whole is None else f"{whole:.0%}")
            + " |"
        )
    lines.append("")
    lines.append(
        f"llada vs the plain LLaDA loop (batch 1): "
        f"{report['results']['llada']['speedup_vs_plain_loop']:.2f}x tokens/s, answers identical: "
        f"{report['results']['llada plain loop (reference)']['answer_agreement']:.0%}"
    )
    for name, row in (report.get("batch") or {}).items():
        lines.append(
            f"{name}: batch 8 / batch 1 tokens/s = {row['batch8_vs_batch1']:.2f}x, "
            f"completions identical: {row['identical']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="training checkpoint (default: train --model first)")
    parser.add_argument("--model", choices=sorted(MODELS), default="words")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_sampling"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-bytes", type=int, default=24)
    parser.add_argument("--prompt-file", help="prompts: beginnings of this file's lines")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.9, 0.7])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
    parser.add_argument("--out", help="also write the report as JSON here")
    parser.add_argument("--vocab", type=int, default=259, help="--model random: output size")
    parser.add_argument(
        "--no-batch", dest="batch", action="store_false", help="skip batch 8 vs batch 1"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        help="run only these samplers (names as in the table; llada always runs)",
    )
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    print(markdown(report))
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
