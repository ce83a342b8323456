"""A few samples from a fixed prompt while the model trains (`train.sample_interval`), written to
`samples.jsonl` and TensorBoard: a quick look at what the loss numbers mean.

Rank 0 samples with the model being trained, through the samplers of `diffusion/` (the LLaDA
block sampler for MDMs, one block, one token revealed per step; the plain ARM sampler for the
baseline), at temperature 1 with a generator keyed by (seed, "train-sample", step), so a resumed
run writes the same samples. Only when rank 0 holds the whole model (TP = PP = 1, ZeRO < 3):
otherwise its weights are split over ranks and sampling would need every rank; the run says so
once and does not sample. The other ranks go on to the next step and wait for rank 0 there.
"""

from __future__ import annotations

import torch

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.diffusion.arm_sampling import arm_sample
from megatron_mdm.diffusion.sampling import llada_sample
from megatron_mdm.utils import keyed_generator

TEMPERATURE = 1.0


def sampling_unavailable(cfg: ExperimentConfig) -> str | None:
    """Why this layout cannot sample during training, or None."""
    p = cfg.parallel
    if p.tensor == 1 and p.pipeline == 1 and p.zero_stage < 3:
        return None
    return (
        "train.sample_interval: training-time samples need the whole model on rank 0 "
        f"(TP = PP = 1 and ZeRO < 3; this run has TP={p.tensor} PP={p.pipeline} "
        f"ZeRO-{p.zero_stage}): no samples"
    )


@torch.no_grad()
def sample_texts(cfg: ExperimentConfig, module, tokenizer, mask_id: int, device, step: int):
    """`train.sample_count` continuations of `train.sample_prompt` by `module` at `step`."""
    t = cfg.train
    prompt_ids = tokenizer.encode(t.sample_prompt) if t.sample_prompt else []
    if cfg.model.objective == "arm" and not prompt_ids:
        prompt_ids = [tokenizer.eos_id]  # the ARM sampler needs one token to start from
    # the model's positions: keep the prompt's end (config check: sample_length < seq_length)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (cfg.model.seq_length - t.sample_length)) :]
    prompt = torch.tensor([prompt_ids] * t.sample_count, dtype=torch.long, device=device)
    gen = keyed_generator(t.seed, "train-sample", step, device=str(device))
    was_training = module.training
    module.eval()
    try:
        if cfg.model.objective == "arm":
            out = arm_sample(module, prompt, t.sample_length, TEMPERATURE, tokenizer.eos_id, gen)
        else:
            n = t.sample_length
            out = llada_sample(module, prompt, mask_id, n, n, n, TEMPERATURE, generator=gen)
    finally:
        module.train(was_training)
    texts = []
    for row in out[:, prompt.shape[1] :].tolist():
        row = row[: row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row
        texts.append(tokenizer.decode(row))
    return texts
