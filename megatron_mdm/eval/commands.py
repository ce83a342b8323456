"""`mdm eval {ppl,likelihood,genppl,gsm8k}`: argument parsing only; the work is in the modules
of `megatron_mdm.eval` (ppl, likelihood, genppl, gsm8k). Every command takes the model as
`--ckpt` (training output_dir or checkpoint, any TP/PP) or `--hf` (an `hf` export), prints its
figures, and with `--output` also writes them as JSON (atomically). Bad input: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_mdm.eval.errors import EvalError
from megatron_mdm.inference.commands import add_sampling_arguments, sampling_config_from_args
from megatron_mdm.inference.sampling_config import SamplingConfig
from megatron_mdm.utils import MDMError, atomic_write_text


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="training output_dir or checkpoint (any TP/PP)")
    source.add_argument(
        "--hf", help="folder exported with `mdm convert export --format hf`, or its hub id"
    )


def _add_common(parser: argparse.ArgumentParser, output_help: str) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True)

    ppl = sub.add_parser(
        "ppl", help="perplexity (upper bound for an MDM, exact for an ARM) on held-out text"
    )
    _add_model_source(ppl)
    text = ppl.add_mutually_exclusive_group(required=True)
    text.add_argument("--data", help="indexed dataset PREFIX (.bin/.idx) or a text/jsonl file")
    text.add_argument(
        "--split",
        choices=["valid", "test"],
        help="the documents the --ckpt run held out in this split (its data.blend or "
        "text_file, cut at its data.split boundaries)",
    )
    ppl.add_argument("--mc-num", type=int, default=128, help="masked copies per window (MDM)")
    ppl.add_argument("--batch-size", type=int, default=32, help="copies per forward pass")
    ppl.add_argument("--seq-length", type=int, help="window length (default: trained length)")
    ppl.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    ppl.add_argument("--estimator", choices=["mc", "bernoulli"], default="mc")
    _add_common(ppl, "write the figures as JSON here")

    lik = sub.add_parser("likelihood", help="log p(answer | prompt): ELBO (MDM) or exact (ARM)")
    _add_model_source(lik)
    lik.add_argument("--prompt", required=True)
    lik.add_argument("--answer", required=True)
    lik.add_argument("--mc-num", type=int, default=128)
    lik.add_argument("--batch-size", type=int, default=32)
    lik.add_argument("--estimator", choices=["mc", "chain_rule", "bernoulli"], default="mc")
    lik.add_argument(
        "--cfg", type=float, default=0.0, help="guidance weight (ranks answers; not normalised)"
    )
    _add_common(lik, "write the estimate as JSON here")

    gen = sub.add_parser("genppl", help="generative perplexity of samples under a judge ARM")
    _add_model_source(gen)
    judge = gen.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge-ckpt", help="ARM training checkpoint of this stack")
    judge.add_argument("--judge-hf", help="transformers causal-LM folder (or our hf ARM export)")
    gen.add_argument("--num-samples", type=int, default=16)
    gen.add_argument("--batch-size", type=int, default=8, help="samples drawn per sampler call")
    gen.add_argument("--prompt", default="", help="condition every sample on EOS + this text")
    add_sampling_arguments(
        gen, SamplingConfig(gen_length=128, steps=128, temperature=1.0), seed=False
    )
    _add_common(gen, "write the figures and samples as JSON here")

    gsm = sub.add_parser("gsm8k", help="GSM8K accuracy (SMDM protocol)")
    _add_model_source(gsm)
    gsm.add_argument("--data", required=True, help="GSM8K jsonl (question, answer '... #### N')")
    gsm.add_argument("--limit", type=int, help="first N problems only")
    gsm.add_argument("--prompt-template", default=None, help="default: 'Question: {question}'")
    gsm.add_argument(
        "--protocol",
        choices=["single", "two_stage"],
        default="single",
        help="two_stage: chain of thought, then ' #### N' from question + chain of thought "
        "(for sft.gsm8k_split_cot models; prompts as the SFT data builds them)",
    )
    gsm.add_argument(
        "--two-stage",
        dest="protocol",
        action="store_const",
        const="two_stage",
        help="same as --protocol two_stage",
    )
    add_sampling_arguments(gsm, SamplingConfig(gen_length=256, steps=256), seed=False)
    gsm.add_argument(
        "--answer-gen-length", type=int, help="two_stage: answer tokens, one block (default: 32)"
    )
    gsm.add_argument(
        "--answer-steps", type=int, default=None, help="two_stage: default --answer-gen-length"
    )
    gsm.add_argument("--seed", type=int, default=0)
    gsm.add_argument(
        "--batch-size", type=int, default=8, help="problems generated per batch (same answers)"
    )
    gsm.add_argument(
        "--output", default="gsm8k_generations.jsonl", help="one JSON line per problem"
    )
    gsm.add_argument("--summary", help="write the accuracy figures as JSON here")
    gsm.add_argument("--no-progress", dest="progress", action="store_false")


def write_json_atomic(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _print_figures(command: str, figures: dict) -> None:
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{command}: {key} = {value}")


def _check_mc(args) -> None:
    """Before loading a model: a bad --mc-num should not cost a checkpoint load."""
    from megatron_mdm.eval.likelihood import check_mc_options

    try:
        check_mc_options(args.mc_num, args.batch_size)
    except ValueError as exc:
        raise EvalError(f"--mc-num/--batch-size: {exc}") from None


def _ppl(args) -> int:
    from megatron_mdm.eval.ppl import perplexity_bound, read_split_stream, read_token_stream
    from megatron_mdm.inference.loading import load_model, trained_seq_length

    _check_mc(args)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise EvalError(f"--max-tokens {args.max_tokens}: must be >= 1")
    if args.split and not args.ckpt:
        raise EvalError(f"--split {args.split}: needs --ckpt (the run's meta.yaml names its data)")
    if args.data and not (Path(args.data + ".idx").is_file() or Path(args.data).is_file()):
        raise EvalError(f"--data {args.data}: neither PREFIX.bin/.idx nor a text file")
    model = load_model(args.ckpt, args.hf)
    seq_length = args.seq_length or trained_seq_length(model, args.ckpt, args.hf)
    if args.split:
        tokens, source = read_split_stream(args.ckpt, args.split, model.tokenizer, args.max_tokens)
    else:
        tokens = read_token_stream(args.data, model.tokenizer, args.max_tokens)
        source = {"data": args.data}
    result = perplexity_bound(
        model,
        tokens,
        seq_length,
        mc_num=args.mc_num,
        batch_size=args.batch_size,
        estimator=args.estimator,
        seed=args.seed,
        progress=args.progress,
    )
    figures = {**result.as_dict(), "seq_length": seq_length, **source}
    _print_figures("ppl", figures)
    if args.output:
        write_json_atomic(args.output, figures)
    return 0


def _likelihood(args) -> int:
    from megatron_mdm.eval.likelihood import encode_pair, estimate_log_likelihood
    from megatron_mdm.inference.loading import load_model

    _check_mc(args)
    model = load_model(args.ckpt, args.hf)
    prompt_ids, answer_ids = encode_pair(model.tokenizer, args.prompt, args.answer)
    if not answer_ids:
        raise EvalError("--answer: encodes to no tokens")
    try:
        est = estimate_log_likelihood(
            model.model_fn,
            prompt_ids,
            answer_ids,
            mask_id=model.mask_id,
            objective=model.objective,
            estimator=args.estimator,
            mc_num=args.mc_num,
            batch_size=args.batch_size,
            cfg=args.cfg,
            seed=args.seed,
            bos_id=model.eos_id,
            device=model.device,
            block_fn=model.block_fn,
            block_size=model.block_size,
        )
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    figures = {
        "log_likelihood": est.log_likelihood,
        "stderr": est.stderr,
        "answer_tokens": est.num_tokens,
        "nll_per_token": -est.log_likelihood / est.num_tokens,
        "estimator": est.estimator,
        "mc_num": est.num_samples if est.estimator in ("mc", "bernoulli") else 0,
        "cfg": args.cfg,
        "kind": "guided score (not normalised)"
        if args.cfg
        else ("lower bound (ELBO)" if est.estimator in ("mc", "bernoulli") else "exact"),
    }
    _print_figures("likelihood", figures)
    if args.output:
        write_json_atomic(args.output, figures)
    return 0


def _genppl(args) -> int:
    from tqdm import tqdm

    from megatron_mdm.eval.genppl import generative_perplexity, load_judge
    from megatron_mdm.inference.generate import generate_ids
    from megatron_mdm.inference.loading import load_model
    from megatron_mdm.utils import stable_seed

    if args.num_samples < 1 or args.batch_size < 1:
        raise EvalError("--num-samples and --batch-size must be >= 1")
    model = load_model(args.ckpt, args.hf)
    judge = load_judge(args.judge_ckpt, args.judge_hf)
    options = sampling_config_from_args(args)
    # Every sample starts after EOS, where documents start in the training stream: the same
    # condition for an MDM and an ARM (whose sampler needs at least one prompt token).
    prompt_ids = [model.eos_id, *model.tokenizer.encode(args.prompt)]
    samples: list[list[int]] = []
    with tqdm(total=args.num_samples, desc="sample", disable=not args.progress) as bar:
        while len(samples) < args.num_samples:
            n = min(args.batch_size, args.num_samples - len(samples))
            seed = stable_seed(args.seed, "genppl", len(samples))
            try:
                samples += generate_ids(model, prompt_ids, options.replace(seed=seed), n)
            except MDMError as exc:
                raise EvalError(str(exc)) from None
            bar.update(n)
    result = generative_perplexity(samples, judge, model.tokenizer, progress=args.progress)
    figures = {k: v for k, v in result.items() if k != "samples"}
    figures.update(
        num_samples=len(samples), **{f"sampler.{k}": v for k, v in vars(options).items()}
    )
    _print_figures("genppl", figures)
    for i, row in enumerate(result["samples"][:3]):
        print(f"genppl: sample[{i}] = {row['text'][:200]!r}")
    if args.output:
        write_json_atomic(args.output, {**figures, "samples": result["samples"]})
    return 0


def _gsm8k(args) -> int:
    from megatron_mdm.eval.gsm8k import (
        DEFAULT_ANSWER_GEN_LENGTH,
        DEFAULT_TEMPLATE,
        evaluate_gsm8k,
        load_problems,
        write_jsonl_atomic,
    )
    from megatron_mdm.inference.loading import load_model

    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit {args.limit}: must be >= 1")
    if args.protocol == "two_stage" and args.prompt_template is not None:
        raise EvalError(
            "--prompt-template: not used by --two-stage (its prompts are the SFT data's)"
        )
    problems = load_problems(args.data, args.limit)
    model = load_model(args.ckpt, args.hf)
    summary, rows = evaluate_gsm8k(
        model,
        problems,
        sampling_config_from_args(args),
        args.prompt_template or DEFAULT_TEMPLATE,
        seed=args.seed,
        progress=args.progress,
        protocol=args.protocol,
        answer_gen_length=(
            DEFAULT_ANSWER_GEN_LENGTH if args.answer_gen_length is None else args.answer_gen_length
        ),
        answer_steps=args.answer_steps,
        batch_size=args.batch_size,
    )
    write_jsonl_atomic(args.output, rows)
    summary["generations"] = str(args.output)
    _print_figures("gsm8k", summary)
    if args.summary:
        write_json_atomic(args.summary, summary)
    return 0


COMMANDS = {"ppl": _ppl, "likelihood": _likelihood, "genppl": _genppl, "gsm8k": _gsm8k}


def run_eval_args(args) -> int:
    from megatron_mdm.convert.causal_lm import resolve_source

    try:
        if getattr(args, "hf", None):  # a hub id: its snapshot in the local cache
            args.hf = str(resolve_source(args.hf, "--hf"))
        return COMMANDS[args.eval_command](args)
    except MDMError as exc:
        print(f"mdm eval {args.eval_command}: error: {exc}", file=sys.stderr)
        return 2
