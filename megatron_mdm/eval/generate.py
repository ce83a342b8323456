"""`mdm generate`: complete a prompt with a masked diffusion model (LLaDA or MDLM sampler)."""

from __future__ import annotations

import argparse
import sys


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="training output_dir or checkpoint (any TP/PP)")
    source.add_argument("--hf", help="folder exported with `mdm convert export --format hf`")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=None, help="default: gen-length")
    parser.add_argument(
        "--remasking", choices=["low_confidence", "random"], default="low_confidence"
    )
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=["llada", "mdlm"], default="llada")
    parser.add_argument("--num-samples", type=int, default=1)


def complete(model, prompt: str, args) -> list[str]:
    import torch

    from megatron_mdm.diffusion.sampling import llada_sample, mdlm_sample

    ids = model.tokenizer.encode(prompt)
    prompt_ids = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=model.device)
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    if args.sampler == "mdlm":
        out = mdlm_sample(
            model.model_fn,
            prompt_ids,
            model.mask_id,
            args.gen_length,
            args.steps,
            generator=generator,
        )
    else:
        out = llada_sample(
            model.model_fn,
            prompt_ids,
            model.mask_id,
            args.gen_length,
            args.steps,
            args.block_length or args.gen_length,
            args.temperature,
            args.remasking,
            args.cfg,
            generator,
        )
    texts = []
    for row in out[:, len(ids) :].tolist():
        if model.eos_id in row:
            row = row[: row.index(model.eos_id)]
        texts.append(model.tokenizer.decode(row))
    return texts


def run_generate_args(args) -> int:
    from megatron_mdm.eval import inference_model

    if args.ckpt:
        model = inference_model.from_training_checkpoint(args.ckpt)
    else:
        model = inference_model.from_hf_folder(args.hf)
    if model.objective != "mdm":
        print(
            "mdm generate: error: this is an ARM checkpoint; the ARM sampler is not available yet",
            file=sys.stderr,
        )
        return 2
    try:
        texts = complete(model, args.prompt, args)
    except ValueError as exc:  # sampler argument errors (block/steps divisibility)
        print(f"mdm generate: error: {exc}", file=sys.stderr)
        return 2
    for i, text in enumerate(texts):
        print(f"[{i}] {args.prompt}{text}")
    return 0
