"""`mdm generate`: complete a prompt, or chat (`--interactive`), with a trained model; and the
sampling flags every generating command shares.

Samplers: `llada` (semi-autoregressive blocks), `mdlm` (ancestral, with the no-change cache) and
`fast` (Fast-dLLM: approximate KV cache `--cache prefix|dual|none` and confidence-threshold
unmasking `--threshold`) for masked diffusion models; `arm` (left to right with a KV cache,
`--cache none` for a full forward pass per token) for the ARM baseline; `block` (blocks left to
right with an exact KV cache, `--cache none` for the whole prefix every step) for block diffusion
models. The default follows the checkpoint's objective; a sampler of another kind is refused
with one line.

The flags map one to one onto `SamplingConfig` fields (`add_sampling_arguments`,
`sampling_config_from_args`); defaults come from a `SamplingConfig`, never from here. The model
and samplers are imported when a command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from megatron_mdm.inference.sampling_config import (
    CACHE_MODES,
    REMASKING,
    SAMPLERS,
    SamplingConfig,
)
from megatron_mdm.utils import MDMError, one_line

# flag -> SamplingConfig field, for every flag `add_sampling_arguments` defines
_FIELDS = [f.name for f in dataclasses.fields(SamplingConfig)]


def _threshold(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'none', not {text}")
    return value


def add_sampling_arguments(
    parser: argparse.ArgumentParser,
    defaults: SamplingConfig = SamplingConfig(),
    *,
    seed: bool = True,
) -> None:
    """One flag per `SamplingConfig` field, defaulting to `defaults`' value. `seed=False` when
    the command defines its own --seed (evaluations derive per-item seeds from it)."""
    d = defaults
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=d.sampler,
        help="default: arm for an ARM checkpoint, block for a block diffusion model, llada for a "
        "masked diffusion model",
    )
    parser.add_argument("--gen-length", type=int, default=d.gen_length)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument(
        "--block-length", type=int, default=d.block_length, help="default: gen-length"
    )
    parser.add_argument("--remasking", choices=REMASKING, default=d.remasking)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance weight")
    parser.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default=d.cache,
        help=f"fast: approximate KV cache per block (default {d.cache}); arm, block: none = no "
        "KV cache (the exact cache otherwise)",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=d.threshold,
        help="fast, block: also reveal every masked token of the block above this confidence "
        f"(default {d.threshold}; 'none': the fixed schedule only)",
    )
    if seed:
        parser.add_argument("--seed", type=int, default=d.seed)
    # stop_at_eos has no flag: commands always stop at EOS (benchmarks set it in code)


def sampling_config_from_args(args: argparse.Namespace, **changes) -> SamplingConfig:
    """The `SamplingConfig` of parsed flags (fields without a flag keep their default)."""
    values = {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
    return SamplingConfig(**{**values, **changes}).validate()


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="training output_dir or checkpoint (any TP/PP)")
    source.add_argument(
        "--hf", help="folder exported with `mdm convert export --format hf`, or its hub id"
    )
    parser.add_argument(
        "--prompt", help="text to complete (required unless --prompt-file or --interactive)"
    )
    parser.add_argument(
        "--prompt-file",
        help="one prompt per line; writes one JSON line per prompt (prompt, completion, tokens, "
        "seconds) to stdout",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="--prompt-file: prompts per batch (equal-length prompts batch together)",
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="chat loop: one user message per stdin line, EOF or /quit ends it",
    )
    add_sampling_arguments(parser)
    parser.add_argument("--num-samples", type=int, default=1)


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


def _interactive(model, config: SamplingConfig) -> int:
    from megatron_mdm.data.sft import ChatTemplate
    from megatron_mdm.inference.generate import complete

    template = ChatTemplate()
    limit = model.max_length

    def fits(prompt: str) -> bool:
        length = len(model.tokenizer.encode(prompt)) + config.gen_length
        return limit is None or length <= limit

    def ask() -> None:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)

    chat_loop(
        sys.stdin,
        lambda prompt: complete(model, prompt, config)[0].strip(),
        sys.stdout,
        lambda messages: template.render_prompt(messages, model.tokenizer),
        fits,
        ask,
    )
    return 0


def read_prompt_file(path: str) -> list[str]:
    """The prompts of `path`, one per line (a trailing newline ends a line, it is not part of
    the prompt); one-line MDMError for a file that cannot be read or holds no prompt."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MDMError(f"--prompt-file {path}: cannot be read ({one_line(str(exc))})") from None
    prompts = text.splitlines()
    if not prompts:
        raise MDMError(f"--prompt-file {path}: no prompt (the file is empty)")
    return prompts


def _prompt_file(model, config: SamplingConfig, prompts: list[str], batch_size: int, out) -> int:
    """One JSON line per prompt, in file order: prompt, completion (text), tokens (generated
    token count, cut at EOS) and seconds (wall time of the batch that generated it)."""
    from megatron_mdm.inference.batching import generate_many

    encoded = [model.tokenizer.encode(p) for p in prompts]
    for prompt, done in zip(prompts, generate_many(model, encoded, config, batch_size)):
        row = {
            "prompt": prompt,
            "completion": model.tokenizer.decode(done.ids),
            "tokens": len(done.ids),
            "seconds": round(done.seconds, 6),
        }
        print(json.dumps(row, ensure_ascii=False), file=out, flush=True)
    return 0


def _error(message: str) -> int:
    print(f"mdm generate: error: {message}", file=sys.stderr)
    return 2


def run_generate_args(args: argparse.Namespace) -> int:
    from megatron_mdm.convert.causal_lm import resolve_source
    from megatron_mdm.inference.generate import complete
    from megatron_mdm.inference.loading import load_model
    from megatron_mdm.inference.sampling_config import pick_sampler

    given = [name for name in ("prompt", "prompt_file") if getattr(args, name) is not None]
    if args.interactive:
        given.append("interactive")
    if len(given) != 1:
        return _error(
            "--prompt is required: give exactly one of --prompt, --prompt-file, --interactive"
        )
    if args.num_samples < 1:
        return _error(f"--num-samples must be positive, not {args.num_samples}")
    if args.batch_size < 1:
        return _error(f"--batch-size must be positive, not {args.batch_size}")
    prompts = None
    if args.prompt_file is not None:
        try:
            prompts = read_prompt_file(args.prompt_file)
        except MDMError as exc:
            return _error(str(exc))
    try:
        config = sampling_config_from_args(args)
        if args.hf:  # a hub id: its snapshot in the local cache
            args.hf = str(resolve_source(args.hf, "--hf"))
        model = load_model(args.ckpt, args.hf)
        config = config.replace(sampler=pick_sampler(config.sampler, model.objective))
        if args.interactive:
            return _interactive(model, config)
        if prompts is not None:
            return _prompt_file(model, config, prompts, args.batch_size, sys.stdout)
        texts = complete(model, args.prompt, config, args.num_samples)
    except MDMError as exc:
        return _error(str(exc))
    for i, text in enumerate(texts):
        print(f"[{i}] {args.prompt}{text}")
    return 0
