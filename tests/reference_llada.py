"""LLaDA's published sampling loop written out plainly: the reference the production samplers
(`diffusion.sampling.llada_sample`, `diffusion.fast_sampling.fast_sample` with no cache and no
threshold) are tested against. It shares nothing with them but the small primitives (Gumbel-max,
the per-step token schedule, guidance), each tested on its own: every step runs the whole
sequence, softmaxes the full vocabulary in float64 and reveals the top-k positions row by row,
as the paper's pseudo-code does."""

from __future__ import annotations

import torch

from megatron_mdm.diffusion.sampling import (
    block_schedule,
    guided_logits,
    gumbel_argmax,
    masked_canvas,
    tokens_per_step,
)


@torch.no_grad()
def reference_llada_sample(
    model_fn,
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + gen_length] with every generated position revealed."""
    num_blocks, steps_per_block = block_schedule(gen_length, steps, block_length, remasking)
    batch, plen = prompt.shape
    x = masked_canvas(prompt, gen_length, mask_id)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :plen] = True
    for block in range(num_blocks):
        start, end = plen + block * block_length, plen + (block + 1) * block_length
        schedule = tokens_per_step((x[:, start:end] == mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            masked = x == mask_id
            logits = guided_logits(model_fn, x, prompt_index, cfg, mask_id)
            x0 = gumbel_argmax(logits, temperature, generator)
            if remasking == "low_confidence":
                probs = torch.softmax(logits.to(torch.float64), dim=-1)
                confidence = probs.gather(-1, x0[..., None])[..., 0]
            else:
                confidence = torch.rand(
                    x.shape, generator=generator, dtype=torch.float64, device=x.device
                )
            confidence[:, end:] = -torch.inf  # never reveal past the current block
            confidence = torch.where(masked, confidence, -torch.inf)
            x0 = torch.where(masked, x0, x)
            reveal = torch.zeros_like(masked)
            for row in range(batch):
                k = int(schedule[row, i])
                if k:
                    reveal[row, torch.topk(confidence[row], k).indices] = True
            x = torch.where(reveal, x0, x)
    return x
