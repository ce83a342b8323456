"""Sampler options shared by the evaluations that generate (GSM8K, generative perplexity, lm-eval's
`generate_until`), and the calls that turn a prompt into completions.

Generation itself is `mdm generate`'s (eval/generate.py: `complete` for text, `sample_ids` for
token ids): evaluations sample exactly as the command does. Its options arrive as an argparse
namespace; we start from that command's own defaults (so an option it gains later gets its
default here too) and set ours on top.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass


@dataclass
class SamplerOptions:
    sampler: str | None = None  # None: `mdm generate`'s default for the model (llada / arm)
    gen_length: int = 64
    steps: int = 64
    block_length: int | None = None  # None: one block (gen_length)
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg: float = 0.0


def _generate_parser() -> argparse.ArgumentParser:
    from megatron_mdm.eval.generate import add_generate_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_generate_arguments(parser)
    return parser


def add_sampler_arguments(parser: argparse.ArgumentParser, defaults: SamplerOptions) -> None:
    from megatron_mdm.eval.generate import SAMPLERS

    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=defaults.sampler,
        help="as mdm generate (default: arm for an ARM checkpoint, else llada)",
    )
    parser.add_argument("--gen-length", type=int, default=defaults.gen_length)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--block-length", type=int, default=defaults.block_length)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument(
        "--remasking", choices=["low_confidence", "random"], default=defaults.remasking
    )
    parser.add_argument(
        "--cfg", type=float, default=defaults.cfg, help="classifier-free guidance weight"
    )


def sampler_options_from_args(args) -> SamplerOptions:
    return SamplerOptions(**{k: getattr(args, k) for k in asdict(SamplerOptions())})


def _generate_namespace(options: SamplerOptions, num_samples: int, seed: int):
    namespace = _generate_parser().parse_args(["--hf", "-", "--prompt", ""])
    for key, value in asdict(options).items():
        setattr(namespace, key, value)
    namespace.num_samples = num_samples
    namespace.seed = seed
    return namespace


def sample_completions(
    model, prompt: str, options: SamplerOptions, num_samples: int = 1, seed: int = 0
) -> list[str]:
    """`num_samples` completions of `prompt` (text after the prompt, cut at the first EOS).
    Raises ValueError for sampler settings that do not fit (block / steps divisibility, a
    diffusion sampler for an ARM checkpoint or the reverse)."""
    from megatron_mdm.eval.generate import complete

    return complete(model, prompt, _generate_namespace(options, num_samples, seed))


def sample_token_ids(
    model, prompt_ids: list[int], options: SamplerOptions, num_samples: int = 1, seed: int = 0
) -> list[list[int]]:
    """`num_samples` continuations of `prompt_ids` as token ids, each cut at its first EOS
    (for prompts that are not text, e.g. a lone EOS: "start a new document")."""
    import torch

    from megatron_mdm.eval.generate import pick_sampler, sample_ids

    args = _generate_namespace(options, num_samples, seed)
    sampler = pick_sampler(args.sampler, model.objective)
    prompt = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=model.device)
    rows = sample_ids(model, prompt, args, sampler)[:, len(prompt_ids) :].tolist()
    return [row[: row.index(model.eos_id)] if model.eos_id in row else row for row in rows]
