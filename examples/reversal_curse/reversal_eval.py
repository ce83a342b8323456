"""Exact-match evaluation of reversal-curse queries for an MDM or an ARM checkpoint.

Both models get the same information about each query: the prompt (preceded by EOS, the
document separator they saw in training) and the length in tokens of the expected answer.
- MDM: the prompt followed by exactly that many `[MASK]` tokens, filled by the LLaDA sampler
  (one block, one token revealed per step, low-confidence remasking, temperature 0, optional
  classifier-free guidance `cfg`).
- ARM: greedy decoding, one full forward pass per token (no KV cache: the models are tiny), until
  EOS or that many tokens.
A query counts as correct when the generated text equals the answer after `normalize` (strip
whitespace and one trailing period).

    python examples/reversal_curse/reversal_eval.py --ckpt RUN_DIR --data dataset.json [--cfg 1.0]
prints one JSON line {"forward": acc, "reverse": acc, ...}, including multiple-choice accuracy by
likelihood (`likelihood_scores`; `--mc 0` skips it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # protocol_facts, also when imported

from megatron_mdm.utils import atomic_write_json

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def normalize(text: str) -> str:
    """The form compared for exact match: surrounding whitespace and one final "." removed."""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


@torch.no_grad()
def arm_greedy(model_fn: ModelFn, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy continuation of `prompt` (without the prompt), stopping at EOS (excluded)."""
    x = torch.tensor([prompt], dtype=torch.long)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(model_fn(x)[0, -1].argmax())
        if token == eos_id:
            break
        out.append(token)
        x = torch.cat([x, torch.tensor([[token]], dtype=torch.long)], dim=1)
    return out


@torch.no_grad()
def mdm_fill(
    model_fn: ModelFn, prompt: list[int], gen_length: int, mask_id: int, cfg: float = 0.0
) -> list[int]:
    """`gen_length` tokens after `prompt` from the LLaDA sampler, deterministic (temperature 0)."""
    from megatron_mdm.diffusion.sampling import llada_sample

    x = torch.tensor([prompt], dtype=torch.long)
    out = llada_sample(
        model_fn,
        x,
        mask_id,
        gen_length=gen_length,
        steps=gen_length,
        block_length=gen_length,
        temperature=0.0,
        remasking="low_confidence",
        cfg=cfg,
    )
    return out[0, len(prompt) :].tolist()


def answer_tokens(model, query: dict) -> tuple[list[int], list[int]]:
    """(prompt ids after a leading EOS, answer ids).

    The answer's ids are the tail of the encoded full statement "<prompt> <answer>" after the
    encoded prompt, so the count is right for any tokenizer (bytes: the space is a token;
    sentencepiece: it is part of the next word's piece)."""
    tok = model.tokenizer
    prompt = list(tok.encode(query["prompt"]))
    whole = list(tok.encode(f"{query['prompt']} {query['answer']}"))
    if whole[: len(prompt)] != prompt:
        raise ValueError(f"the tokenizer splits {query['prompt']!r} differently inside the fact")
    return [model.eos_id, *prompt], whole[len(prompt) :]


def predict(model, query: dict, cfg: float = 0.0) -> str:
    prompt, answer = answer_tokens(model, query)
    length = len(answer)
    if model.objective == "arm":
        if cfg:
            raise ValueError("classifier-free guidance applies to the MDM only")
        ids = arm_greedy(model.model_fn, prompt, length, model.eos_id)
    else:
        ids = mdm_fill(model.model_fn, prompt, length, model.mask_id, cfg)
        if model.eos_id in ids:
            ids = ids[: ids.index(model.eos_id)]
    return model.tokenizer.decode(ids)


def layout_tokens(model, before: str, answer: str, after: str) -> tuple[list, list, list]:
    """(ids before the answer, answer ids, ids after it) as spans of the encoded whole text
    (parts joined by one space), so the counts are right for any tokenizer."""
    tok = model.tokenizer
    head = list(tok.encode(before)) if before else []
    upto = list(tok.encode(f"{before} {answer}" if before else answer))
    whole = list(tok.encode(" ".join(part for part in (before, answer, after) if part)))
    if upto[: len(head)] != head or whole[: len(upto)] != upto:
        raise ValueError(f"the tokenizer splits {before!r} / {answer!r} differently in the text")
    return head, upto[len(head) :], whole[len(upto) :]


@torch.no_grad()
def mdm_infill(model, head: list[int], length: int, tail: list[int]) -> list[int]:
    """The `length` masked tokens between EOS + `head` and `tail` + EOS (the document's
    boundaries as in training), filled in place (`infill_sample`, one token per step,
    low-confidence, temperature 0)."""
    from megatron_mdm.diffusion.sampling import infill_sample

    eos = model.eos_id
    canvas = torch.tensor([[eos, *head, *[model.mask_id] * length, *tail, eos]])
    out = infill_sample(model.model_fn, canvas, model.mask_id, steps=length)
    return out[0, 1 + len(head) : 1 + len(head) + length].tolist()


def predict_layout(model, before: str, answer: str, after: str) -> str:
    """The model's answer for a `protocol_facts.prompt_layout`: the ARM continues `before` (at
    most the answer's length); the MDM fills the answer's span in place between EOS + `before`
    and `after` + EOS, also when `after` is empty (forward): the closing EOS is how an MDM is
    told the answer's length, the information the ARM gets as its token limit. Without it the
    masks end the sequence, a layout no packed training sequence has."""
    head, ids, tail = layout_tokens(model, before, answer, after)
    if model.objective == "arm":
        if tail:
            raise ValueError("an ARM cannot fill a span in place")
        out = arm_greedy(model.model_fn, [model.eos_id, *head], len(ids), model.eos_id)
    else:
        out = mdm_infill(model, head, len(ids), tail)
    if model.eos_id in out:
        out = out[: out.index(model.eos_id)]
    return model.tokenizer.decode(out)


def evaluate_pairs(model, queries: list[dict], progress: bool = True) -> dict:
    """The LLaDA protocol (`protocol_facts`): accuracy per direction, and every prediction."""
    from protocol_facts import prompt_layout
    from tqdm import tqdm

    rows = []
    for q in tqdm(queries, desc=f"eval {model.objective}", disable=not progress):
        before, answer, after = prompt_layout(q, model.objective)
        pred = predict_layout(model, before, answer, after)
        prompt = f"{before} [{len(answer.split())} words] {after}".strip()
        rows.append(
            {**q, "prompt": prompt, "prediction": pred, "correct": exact_match(pred, answer)}
        )
    result = {
        direction: accuracy(r["correct"] for r in rows if r["direction"] == direction)
        for direction in ("forward", "reverse")
    }
    return {"accuracy": result, "predictions": rows}


def accuracy(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def evaluate(model, queries: list[dict], cfg: float = 0.0, progress: bool = True) -> dict:
    """Accuracy per direction and per (subset, direction), plus every prediction."""
    from tqdm import tqdm

    rows = []
    for q in tqdm(queries, desc=f"eval {model.objective} cfg={cfg}", disable=not progress):
        pred = predict(model, q, cfg)
        rows.append({**q, "prediction": pred, "correct": exact_match(pred, q["answer"])})
    result = {}
    for direction in ("forward", "reverse"):
        result[direction] = accuracy(r["correct"] for r in rows if r["direction"] == direction)
    for subset in sorted({r["subset"] for r in rows}):
        for direction in ("forward", "reverse"):
            result[f"{subset}/{direction}"] = accuracy(
                r["correct"] for r in rows if r["subset"] == subset and r["direction"] == direction
            )
    return {"accuracy": result, "predictions": rows}


def likelihood_scores(
    model, queries: list[dict], cfg: float = 0.0, mc: int = 8, progress: bool = True
) -> dict:
    """Per direction: `nll`, minus the log-likelihood of the true answer per answer token (ARM:
    exact; MDM: the Monte Carlo ELBO of `megatron_mdm.eval.likelihood` with `mc` draws, guided
    logits when cfg > 0), and `mc_acc`, multiple choice: the true answer must score best among
    the answers of every query of the same subset and direction."""
    from tqdm import tqdm

    from megatron_mdm.eval.likelihood import estimate_log_likelihood

    out = {}
    for direction in ("forward", "reverse"):
        qs = [q for q in queries if q["direction"] == direction]
        nll_per_token, correct = [], []
        for q in tqdm(
            qs, desc=f"likelihood {direction} cfg={cfg}", leave=False, disable=not progress
        ):
            candidates = [c["answer"] for c in qs if c["subset"] == q["subset"]]
            scores = {}
            for c in candidates:
                prompt, ids = answer_tokens(model, {**q, "answer": c})
                est = estimate_log_likelihood(
                    model.model_fn,
                    prompt,
                    ids,
                    mask_id=model.mask_id,
                    objective=model.objective,
                    bos_id=model.eos_id,
                    mc_num=mc,
                    batch_size=mc,
                    cfg=cfg,
                    device=model.device,
                )
                scores[c] = -est.log_likelihood
                if c == q["answer"]:
                    nll_per_token.append(scores[c] / len(ids))
            correct.append(min(scores, key=scores.get) == q["answer"])
        out[direction] = {
            "nll": sum(nll_per_token) / len(nll_per_token),
            "mc_acc": sum(correct) / len(correct),
            "mc_candidates": len(qs) // max(1, len({q["subset"] for q in qs})),
        }
    return out


def load_queries(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["queries"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="training output_dir or checkpoint")
    parser.add_argument("--data", required=True, help="dataset.json written by run.py")
    parser.add_argument("--cfg", type=float, default=0.0)
    parser.add_argument("--out", help="write accuracies and predictions here (JSON)")
    parser.add_argument(
        "--mc", type=int, default=8, help="likelihood draws per MDM answer; 0: no likelihoods"
    )
    args = parser.parse_args(argv)
    from megatron_mdm.inference.loading import from_training_checkpoint

    torch.set_grad_enabled(False)
    model = from_training_checkpoint(args.ckpt)
    queries = load_queries(args.data)
    if queries and "first" in queries[0]:  # the LLaDA protocol's two-part facts
        result = evaluate_pairs(model, queries)
    else:
        result = evaluate(model, queries, cfg=args.cfg)
    if args.mc and "first" not in queries[0]:
        lik = likelihood_scores(model, queries, cfg=args.cfg, mc=args.mc)
        result["likelihood"] = lik
        for direction in ("forward", "reverse"):
            result["accuracy"][f"{direction} (multiple choice)"] = lik[direction]["mc_acc"]
    if args.out:
        atomic_write_json(args.out, result, indent=1)
    print(json.dumps(result["accuracy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
