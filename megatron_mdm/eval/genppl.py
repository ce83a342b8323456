"""`mdm eval genppl`: generative perplexity (MDLM's sample-quality metric) and unigram entropy.

Sample N sequences from the model under test (each conditioned on EOS, i.e. the start of a new
document, plus an optional prompt; cut at the next EOS), then score their text with a judge causal
LM: our own ARM checkpoint (`--judge-ckpt`), an exported `hf` folder of one, or any local
`transformers` causal-LM folder (`--judge-hf`, its own tokenizer: the text is retokenised;
built-in architectures only: no Python file from the folder is run, `trust_remote_code=False`).
Generative perplexity = exp(total judge NLL / total judge tokens); the judge conditions each text
on its BOS (or EOS). Low is good only together with a normal unigram entropy: a sampler that
repeats one token gets a low perplexity and a low entropy, which is why both are reported
(per-sample entropy of the sampled ids' frequencies, in nats, averaged).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_mdm.eval.errors import EvalError
from megatron_mdm.eval.likelihood import arm_log_likelihood
from megatron_mdm.inference.loading import load_model, trained_seq_length


@dataclass
class Judge:
    """A causal LM that scores text: `encode(text) -> ids`, `model_fn`, the id every text is
    conditioned on (BOS, or EOS for tokenizers without one), and its context length."""

    name: str
    encode: object
    model_fn: object
    prefix_id: int
    max_length: int
    device: torch.device

    @torch.no_grad()
    def nll(self, text: str) -> tuple[float, int]:
        """(sum of -log p over the text's tokens, number of tokens scored)."""
        ids = list(self.encode(text))[: self.max_length - 1]
        if not ids:
            return 0.0, 0
        answer = torch.tensor(ids, dtype=torch.long, device=self.device)
        prefix = torch.tensor([self.prefix_id], dtype=torch.long, device=self.device)
        logp, _ = arm_log_likelihood(self.model_fn, prefix, answer, self.prefix_id)
        return -logp, len(ids)


def _is_our_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "megatron_mdm"
    except (OSError, json.JSONDecodeError):
        return False


def load_judge(judge_ckpt: str | None = None, judge_hf: str | None = None) -> Judge:
    if judge_hf is not None and not _is_our_export(Path(judge_hf)):
        return _transformers_judge(Path(judge_hf))
    model = load_model(ckpt=judge_ckpt, hf=judge_hf)
    where = judge_ckpt or judge_hf
    if model.objective != "arm":
        raise EvalError(f"judge {where}: objective is {model.objective}, a judge must be an ARM")
    return Judge(
        name=str(where),
        encode=model.tokenizer.encode,
        model_fn=model.model_fn,
        prefix_id=model.eos_id,
        max_length=trained_seq_length(model, judge_ckpt, judge_hf),
        device=model.device,
    )


def _transformers_judge(folder: Path) -> Judge:
    """Any local causal LM with its tokenizer (`AutoModelForCausalLM`, no hub access)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise EvalError(f"--judge-hf {folder}: not a transformers folder (no config.json)")
    try:
        # Never Python files from the folder: a judge needing remote code is refused.
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise EvalError(f"--judge-hf {folder}: {str(exc).splitlines()[0]}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    prefix = prefix if prefix is not None else tokenizer.eos_token_id
    if prefix is None:
        raise EvalError(f"--judge-hf {folder}: the tokenizer has neither a BOS nor an EOS token")
    config = model.config
    max_length = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", 1024
    )
    return Judge(
        name=str(folder),
        encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        model_fn=lambda x: model(input_ids=x).logits,
        prefix_id=int(prefix),
        max_length=int(max_length),
        device=device,
    )


def unigram_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the token frequencies of one sample; 0 for a sample of one repeated id."""
    if not ids:
        return 0.0
    n = len(ids)
    return -sum(c / n * math.log(c / n) for c in Counter(ids).values())


def generative_perplexity(
    samples: list[list[int]], judge: Judge, tokenizer, progress: bool = True
) -> dict:
    """Judge perplexity over all samples (token-weighted; each sample's text decoded with the
    sampled model's `tokenizer`) and mean unigram entropy of the sampled ids, with the
    per-sample figures."""
    from tqdm import tqdm

    rows = []
    for ids in tqdm(samples, desc="judge", unit="sample", disable=not progress):
        text = tokenizer.decode(ids)
        nll, n = judge.nll(text)
        rows.append(
            {
                "text": text,
                "ids": list(ids),
                "judge_nll": nll,
                "judge_tokens": n,
                "unigram_entropy": unigram_entropy(list(ids)),
            }
        )
    total_nll = sum(r["judge_nll"] for r in rows)
    total_tokens = sum(r["judge_tokens"] for r in rows)
    return {
        "gen_ppl": math.exp(total_nll / total_tokens) if total_tokens else float("nan"),
        "judge_nll_per_token": total_nll / total_tokens if total_tokens else float("nan"),
        "judge_tokens": total_tokens,
        "unigram_entropy": sum(r["unigram_entropy"] for r in rows) / max(len(rows), 1),
        "empty_samples": sum(1 for r in rows if r["judge_tokens"] == 0),
        "judge": judge.name,
        "samples": rows,
    }
