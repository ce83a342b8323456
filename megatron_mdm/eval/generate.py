"""`mdm generate`: complete a prompt, or chat (`--interactive`), with a trained model.

Samplers: `llada` (semi-autoregressive blocks), `mdlm` (ancestral, with the no-change cache) and
`fast` (Fast-dLLM: approximate KV cache `--cache prefix|dual|none` and confidence-threshold
unmasking `--threshold`) for masked diffusion models; `arm` (left to right with a KV cache,
`--cache none` for a full forward pass per token) for the ARM baseline. The default follows the
checkpoint's objective; a sampler of the other kind is refused with one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

DIFFUSION_SAMPLERS = ("llada", "mdlm", "fast")
SAMPLERS = (*DIFFUSION_SAMPLERS, "arm")
CACHE_MODES = ("none", "prefix", "dual")


def _threshold(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'none', not {text}")
    return value


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="training output_dir or checkpoint (any TP/PP)")
    source.add_argument("--hf", help="folder exported with `mdm convert export --format hf`")
    parser.add_argument("--prompt", help="text to complete (required unless --interactive)")
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="chat loop: one user message per stdin line, EOF or /quit ends it",
    )
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=None, help="default: gen-length")
    parser.add_argument(
        "--remasking", choices=["low_confidence", "random"], default="low_confidence"
    )
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="default: arm for an ARM checkpoint, llada for a masked diffusion model",
    )
    parser.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default="dual",
        help="fast: approximate KV cache per block (default dual); arm: none = no KV cache",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=0.9,
        help="fast: also reveal every masked token of the block above this confidence "
        "(default 0.9; 'none': the fixed schedule only)",
    )
    parser.add_argument("--num-samples", type=int, default=1)


def pick_sampler(requested: str | None, objective: str) -> str:
    """The sampler to run; ValueError for one of the wrong kind for the model's objective."""
    if requested is None:
        return "arm" if objective == "arm" else "llada"
    if objective == "arm" and requested != "arm":
        raise ValueError(
            f"--sampler {requested} needs a masked diffusion model; this is an ARM "
            "checkpoint (use --sampler arm)"
        )
    if objective != "arm" and requested == "arm":
        raise ValueError(
            "--sampler arm needs an ARM checkpoint; this is a masked diffusion model "
            f"(use one of {', '.join(DIFFUSION_SAMPLERS)})"
        )
    return requested


def sample_ids(model, prompt_ids, args, sampler: str):
    """Token ids [B, P] -> [B, P + n] with the chosen sampler and the command's arguments."""
    import torch

    from megatron_mdm.diffusion.arm_sampling import arm_sample, arm_sample_kv
    from megatron_mdm.diffusion.fast_sampling import fast_sample
    from megatron_mdm.diffusion.sampling import llada_sample, mdlm_sample

    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    block_length = args.block_length or args.gen_length
    if sampler == "arm":
        if args.cache == "none":
            return arm_sample(
                model.model_fn,
                prompt_ids,
                args.gen_length,
                args.temperature,
                model.eos_id,
                generator,
            )
        return arm_sample_kv(
            model.cached_model,
            prompt_ids,
            args.gen_length,
            args.temperature,
            model.eos_id,
            generator,
        )
    if sampler == "mdlm":
        return mdlm_sample(
            model.model_fn,
            prompt_ids,
            model.mask_id,
            args.gen_length,
            args.steps,
            generator=generator,
        )
    if sampler == "fast":
        return fast_sample(
            model.model_fn,
            prompt_ids,
            model.mask_id,
            args.gen_length,
            args.steps,
            block_length,
            args.temperature,
            args.remasking,
            args.cfg,
            generator,
            threshold=args.threshold,
            cache=args.cache,
            cached_model=None if args.cache == "none" else model.cached_model,
        )
    return llada_sample(
        model.model_fn,
        prompt_ids,
        model.mask_id,
        args.gen_length,
        args.steps,
        block_length,
        args.temperature,
        args.remasking,
        args.cfg,
        generator,
    )


def complete(model, prompt: str, args, sampler: str | None = None) -> list[str]:
    """`args.num_samples` completions of `prompt` (text after the prompt, cut at EOS)."""
    import torch

    sampler = sampler or pick_sampler(args.sampler, model.objective)
    ids = model.tokenizer.encode(prompt)
    prompt_ids = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=model.device)
    out = sample_ids(model, prompt_ids, args, sampler)
    texts = []
    for row in out[:, len(ids) :].tolist():
        if model.eos_id in row:
            row = row[: row.index(model.eos_id)]
        texts.append(model.tokenizer.decode(row))
    return texts


def chat_loop(
    lines: Iterable[str],
    answer: Callable[[str], str],
    out: TextIO,
    render: Callable[[list[dict]], str],
    fits: Callable[[str], bool] = lambda prompt: True,
    ask: Callable[[], None] = lambda: None,
) -> int:
    """Read user messages from `lines` until EOF or `/quit`; print each answer on `out`.

    The whole conversation is rendered into every prompt (`render`, a chat template), so the
    model sees the history; the oldest exchanges are dropped while the prompt does not `fit`
    the model's length. `ask` shows an input prompt (only for a terminal). Returns the number
    of answers."""
    messages: list[dict] = []
    answers = 0
    ask()
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip() == "/quit":
            break
        if text.strip():
            messages.append({"role": "user", "content": text})
            prompt = render(messages)
            while len(messages) > 1 and not fits(prompt):
                messages = messages[2:]  # the oldest user message and its answer
                prompt = render(messages)
            reply = answer(prompt)
            messages.append({"role": "assistant", "content": reply})
            print(reply, file=out, flush=True)
            answers += 1
        ask()
    return answers


def _interactive(model, args, sampler: str) -> int:
    from megatron_mdm.data.sft import ChatTemplate

    template = ChatTemplate()
    args.num_samples = 1
    limit = model.max_length

    def fits(prompt: str) -> bool:
        length = len(model.tokenizer.encode(prompt)) + args.gen_length
        return limit is None or length <= limit

    def ask() -> None:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)

    chat_loop(
        sys.stdin,
        lambda prompt: complete(model, prompt, args, sampler)[0].strip(),
        sys.stdout,
        lambda messages: template.render_prompt(messages, model.tokenizer),
        fits,
        ask,
    )
    return 0


def _error(message: str) -> int:
    print(f"mdm generate: error: {message}", file=sys.stderr)
    return 2


def run_generate_args(args) -> int:
    from megatron_mdm.eval.loading import EvalError, load_model

    if args.prompt is None and not args.interactive:
        return _error("--prompt is required (or --interactive)")
    if args.num_samples < 1:
        return _error(f"--num-samples must be positive, not {args.num_samples}")
    try:
        model = load_model(args.ckpt, args.hf)
    except EvalError as exc:
        return _error(str(exc))
    try:
        sampler = pick_sampler(args.sampler, model.objective)
        if args.interactive:
            return _interactive(model, args, sampler)
        texts = complete(model, args.prompt, args, sampler)
    except ValueError as exc:  # sampler arguments (block/steps divisibility, objective, ...)
        return _error(str(exc))
    for i, text in enumerate(texts):
        print(f"[{i}] {args.prompt}{text}")
    return 0
