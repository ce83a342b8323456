"""log p(answer | prompt) for masked diffusion LMs and ARM baselines (docs/design.md §5, §7).

An MDM defines no tractable likelihood, only a lower bound (the ELBO). Written over the number l
of masked answer tokens, for an answer of A tokens:

    ELBO = E_{l ~ U{1..A}} E_{S ⊂ answer, |S| = l} [ -(A / l) * sum_{i in S} CE(x_i | x with S masked) ]

Estimators (every one works on any `model_fn(ids [B, L]) -> logits [B, L, V]`):
- `mc` (LLaDA): draw l, mask exactly l answer tokens, score -(A/l) sum CE. Within a batch of b
  samples the l's are stratified (one uniform offset, then evenly spaced over {1..A}), so a batch
  always covers small and large l; each l is still marginally uniform, so the mean is unbiased.
- `bernoulli`: the pretraining form: t ~ U(0, 1), mask every answer token with probability t,
  score -(1/t) sum CE. Same expectation, much larger variance (1/t for small t): the reason the
  `mc` estimator is the default. Kept for comparison and for MDLM-style perplexities.
- `chain_rule` (SMDM): A passes, pass i masks answer positions >= i and scores position i: the
  exact log-probability of the answer under left-to-right decoding with this MDM (a normalised
  distribution over answers, deterministic, A forward passes).
- ARM checkpoints (`objective: arm`): the exact next-token log-probability, so the same commands
  compare MDMs with their ARM baselines.
- Block diffusion checkpoints (`objective: block`, docs/design.md §11): the block ELBO, a sum over
  the blocks the answer touches of each block's ELBO given the clean tokens before it. One
  forward pass of the training layout [x_t; x_0] (`block_fn`) scores every block of a sample at
  once; each block draws its own l (`mc`, stratified over the batch per block) or t
  (`bernoulli`). `chain_rule` runs unchanged on the block-causal `model_fn` (a query at answer
  position i sees only its block and the clean blocks before it).

Classifier-free guidance (`cfg` = w > 0) replaces the logits by `guided_logits` (prompt positions
masked for the unconditional pass). A guided score ranks choices; it is not a normalised
likelihood, and not a bound on one.

Randomness: every estimate draws from a CPU generator seeded by (seed, prompt ids, answer ids), so
the same pair gets the same masks whatever the device, the request order or the caller (the
lm-eval model and `mdm eval likelihood` agree exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from megatron_mdm.diffusion.block_sampling import block_diffusion_sample
from megatron_mdm.diffusion.sampling import combine_guidance, guided_logits, llada_sample
from megatron_mdm.utils import stable_seed

ModelFn = Callable[[torch.Tensor], torch.Tensor]
ESTIMATORS = ("mc", "chain_rule", "bernoulli")


@dataclass
class LikelihoodEstimate:
    """`log_likelihood`: the estimate (MDM `mc`/`bernoulli`: of the ELBO, a lower bound on
    log p; `chain_rule` and ARM: exact under that factorisation, `stderr` 0)."""

    log_likelihood: float
    stderr: float
    num_tokens: int
    estimator: str
    num_samples: int = 1


def encode_pair(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, answer) as lm-eval splits them: trailing whitespace of the prompt
    belongs to the answer, and the answer ids are the tail of the encoded concatenation, so a
    tokenizer that merges across the boundary still scores the text the model would see."""
    stripped = prompt.rstrip()
    if stripped != prompt:
        answer = prompt[len(stripped) :] + answer
        prompt = stripped
    prompt_ids = list(tokenizer.encode(prompt)) if prompt else []
    whole = list(tokenizer.encode(prompt + answer))
    if whole[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, whole[len(prompt_ids) :]
    return prompt_ids, list(tokenizer.encode(answer))


def pair_generator(seed: int, prompt: Sequence[int], answer: Sequence[int]) -> torch.Generator:
    """The generator of one (prompt, answer) pair; see the module docstring."""
    key = stable_seed(seed, "likelihood", tuple(int(i) for i in prompt), tuple(answer))
    return torch.Generator().manual_seed(key)


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32, [B, A]. `[MASK]`/padding logits are -inf: fine."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, targets[..., None])[..., 0]


def _answer_log_probs(
    model_fn: ModelFn,
    xt: torch.Tensor,
    prompt_len: int,
    answer: torch.Tensor,
    mask_id: int,
    cfg: float,
) -> torch.Tensor:
    """Log-probabilities [B, A] of the answer tokens at the answer positions of `xt` [B, P + A]."""
    prompt_index = torch.zeros_like(xt, dtype=torch.bool)
    prompt_index[:, :prompt_len] = True
    logits = guided_logits(model_fn, xt, prompt_index, cfg, mask_id)[:, prompt_len:]
    return _target_log_probs(logits, answer.expand(xt.shape[0], -1))


def stratified_mask_counts(answer_len: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[batch] mask counts in {1..A}: a uniform offset k, then l_j = (k + floor(j A / b)) mod A + 1.

    Each l_j alone is uniform on {1..A} (k is), so averages stay unbiased; together they spread
    over the whole range, which removes most of the between-l variance of the estimate."""
    k = int(torch.randint(0, answer_len, (), generator=generator))
    j = torch.arange(batch)
    return (k + (j * answer_len) // batch) % answer_len + 1


def _random_subsets(counts: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """[b, size] bool, row j a uniformly random subset of `counts[j]` positions."""
    ranks = torch.rand(len(counts), size, generator=generator).argsort(1).argsort(1)
    return ranks < counts[:, None]


def check_mc_options(mc_num: int, batch_size: int) -> None:
    """ValueError unless mc_num samples split into equal batches (needed for the batch-mean
    standard error). Cheap: callers check before loading a model."""
    _batch_sizes(mc_num, batch_size)


def _batch_sizes(mc_num: int, batch_size: int) -> list[int]:
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"mc_num ({mc_num}) and batch size ({batch_size}) must be >= 1")
    batch = min(batch_size, mc_num)
    if mc_num % batch:
        raise ValueError(f"mc_num {mc_num} is not a multiple of the batch size {batch}")
    return [batch] * (mc_num // batch)


@torch.no_grad()
def mc_samples(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[mc_num] float64 single-sample estimates -(A / l) * sum CE of the ELBO (LLaDA), grouped in
    consecutive batches of `batch_size` with stratified l inside each batch."""
    p_len, a_len = len(prompt), len(answer)
    x0 = torch.cat([prompt, answer])
    scores = []
    for b in _batch_sizes(mc_num, batch_size):
        counts = stratified_mask_counts(a_len, b, generator)
        masked = _random_subsets(counts, a_len, generator).to(x0.device)
        xt = x0.repeat(b, 1)
        xt[:, p_len:] = torch.where(masked, mask_id, xt[:, p_len:])
        logp = _answer_log_probs(model_fn, xt, p_len, answer, mask_id, cfg)
        ce_sum = -torch.where(masked, logp, 0.0).sum(1).double().cpu()
        scores.append(-(a_len / counts.double()) * ce_sum)
    return torch.cat(scores)


@torch.no_grad()
def bernoulli_samples(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[mc_num] float64 single-sample estimates -(1/t) * sum CE with per-token masking at rate t
    (t stratified over each batch: t_j = (u + j/b) mod 1). No eps floor, so the expectation is
    exactly the ELBO; a sample with t so small that nothing is masked scores 0."""
    p_len, a_len = len(prompt), len(answer)
    x0 = torch.cat([prompt, answer])
    scores = []
    for b in _batch_sizes(mc_num, batch_size):
        u = torch.rand((), generator=generator, dtype=torch.float64)
        t = torch.remainder(u + torch.arange(b, dtype=torch.float64) / b, 1.0)
        t = t.clamp_min(torch.finfo(torch.float64).tiny)
        masked = torch.rand(b, a_len, generator=generator, dtype=torch.float64) < t[:, None]
        xt = x0.repeat(b, 1)
        xt[:, p_len:] = torch.where(masked.to(x0.device), mask_id, xt[:, p_len:])
        logp = _answer_log_probs(model_fn, xt, p_len, answer, mask_id, cfg)
        ce_sum = -torch.where(masked.to(logp.device), logp, 0.0).sum(1).double().cpu()
        scores.append(-ce_sum / t)
    return torch.cat(scores)


def answer_blocks(prompt_len: int, answer_len: int, block_size: int) -> list[tuple[int, int]]:
    """[(start, end)) answer-index ranges of the blocks the answer touches; blocks sit at
    multiples of `block_size` from the start of the prompt."""
    ranges, i = [], 0
    while i < answer_len:
        end = min(answer_len, (prompt_len + i) // block_size * block_size + block_size - prompt_len)
        ranges.append((i, end))
        i = end
    return ranges


def _block_logits(block_fn, xt, x0, prompt_len: int, mask_id: int, cfg: float) -> torch.Tensor:
    """x_t's logits under the training layout, guided: the unconditional pass masks the prompt
    in both copies."""
    if cfg == 0:
        return block_fn(xt, x0)
    uxt, ux0 = xt.clone(), x0.clone()
    uxt[:, :prompt_len] = mask_id
    ux0[:, :prompt_len] = mask_id
    cond, uncond = block_fn(torch.cat([xt, uxt]), torch.cat([x0, ux0])).chunk(2)
    return combine_guidance(cond, uncond, cfg)


@torch.no_grad()
def block_elbo_samples(
    block_fn: Callable,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    block_size: int,
    estimator: str = "mc",
    mc_num: int = 128,
    batch_size: int = 32,
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[mc_num] float64 single-sample estimates of the block ELBO: per block of n answer tokens,
    `mc` masks l ~ U{1..n} of them (stratified over the batch) with weight n / l, `bernoulli`
    masks each with the block's t (stratified) with weight 1 / t; summed over blocks."""
    p_len, a_len = len(prompt), len(answer)
    x0 = torch.cat([prompt, answer])
    blocks = answer_blocks(p_len, a_len, block_size)
    scores = []
    for b in _batch_sizes(mc_num, batch_size):
        masked = torch.zeros(b, a_len, dtype=torch.bool)
        weight = torch.zeros(b, a_len, dtype=torch.float64)
        for start, end in blocks:
            n = end - start
            if estimator == "mc":
                counts = stratified_mask_counts(n, b, generator)
                masked[:, start:end] = _random_subsets(counts, n, generator)
                weight[:, start:end] = (n / counts.double())[:, None]
            else:
                u = torch.rand((), generator=generator, dtype=torch.float64)
                t = torch.remainder(u + torch.arange(b, dtype=torch.float64) / b, 1.0)
                t = t.clamp_min(torch.finfo(torch.float64).tiny)
                draws = torch.rand(b, n, generator=generator, dtype=torch.float64)
                masked[:, start:end] = draws < t[:, None]
                weight[:, start:end] = (1.0 / t)[:, None]
        clean = x0.repeat(b, 1)
        xt = clean.clone()
        xt[:, p_len:] = torch.where(masked.to(x0.device), mask_id, xt[:, p_len:])
        logits = _block_logits(block_fn, xt, clean, p_len, mask_id, cfg)[:, p_len:]
        logp = _target_log_probs(logits, answer.expand(b, -1)).double().cpu()
        scores.append((torch.where(masked, logp, 0.0) * weight).sum(1))
    return torch.cat(scores)


def summarize_samples(samples: torch.Tensor, batch_size: int, estimator: str) -> LikelihoodEstimate:
    """Mean and standard error. Stratification correlates the samples of a batch, so with two or
    more batches the error comes from the spread of the (independent) batch means; with one
    batch the iid formula is used, which overstates the error of a stratified mean."""
    n = len(samples)
    batch = min(batch_size, n)
    means = samples.view(-1, batch).mean(1)
    if len(means) >= 2:
        stderr = means.std(unbiased=True).item() / math.sqrt(len(means))
    elif n >= 2:
        stderr = samples.std(unbiased=True).item() / math.sqrt(n)
    else:
        stderr = float("nan")
    return LikelihoodEstimate(samples.mean().item(), stderr, 0, estimator, n)


@torch.no_grad()
def chain_rule_log_likelihood(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    batch_size: int = 32,
    cfg: float = 0.0,
) -> float:
    """sum_i log p(a_i | prompt, a_<i, [MASK] at every later answer position)."""
    p_len, a_len = len(prompt), len(answer)
    x0 = torch.cat([prompt, answer])
    total = 0.0
    for start in range(0, a_len, batch_size):
        steps = torch.arange(start, min(start + batch_size, a_len), device=x0.device)
        later = torch.arange(a_len, device=x0.device)[None] >= steps[:, None]
        xt = x0.repeat(len(steps), 1)
        xt[:, p_len:] = torch.where(later, mask_id, xt[:, p_len:])
        logp = _answer_log_probs(model_fn, xt, p_len, answer, mask_id, cfg)
        total += logp.gather(1, steps[:, None]).double().sum().item()
    return total


@torch.no_grad()
def arm_log_likelihood(
    model_fn: ModelFn, prompt: torch.Tensor, answer: torch.Tensor, bos_id: int
) -> tuple[float, bool]:
    """Exact sum_i log p(a_i | prompt, a_<i) of a causal model, and whether greedy decoding
    would produce the answer. An empty prompt is replaced by `bos_id` (the document separator
    the model was trained to continue from), so the first answer token is scored too."""
    if len(prompt) == 0:
        prompt = torch.tensor([bos_id], dtype=answer.dtype, device=answer.device)
    x = torch.cat([prompt, answer])[:-1]
    logits = model_fn(x[None])[0, len(prompt) - 1 :]
    logp = _target_log_probs(logits, answer)
    greedy = bool((logits.argmax(-1) == answer).all())
    return logp.double().sum().item(), greedy


@torch.no_grad()
def mdm_greedy_matches(
    model_fn: ModelFn, prompt: torch.Tensor, answer: torch.Tensor, mask_id: int, cfg: float = 0.0
) -> bool:
    """Whether greedy low-confidence decoding (one token per step) from prompt + A masks yields
    exactly the answer: lm-eval's `is_greedy` for an MDM. A forward passes."""

    a_len = len(answer)
    out = llada_sample(
        model_fn, prompt[None], mask_id, a_len, a_len, a_len, 0.0, "low_confidence", cfg
    )
    return bool((out[0, len(prompt) :] == answer).all())


@torch.no_grad()
def block_greedy_matches(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mask_id: int,
    block_size: int,
    cfg: float = 0.0,
) -> bool:
    """`mdm_greedy_matches` for a block diffusion model: the block sampler, greedy, one token
    per step (no threshold), reproduces the answer."""
    a_len = len(answer)
    out = block_diffusion_sample(
        prompt[None], mask_id, block_size, a_len, a_len, cfg=cfg, model_fn=model_fn
    )
    return bool((out[0, len(prompt) :] == answer).all())


def estimate_log_likelihood(
    model_fn: ModelFn,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    *,
    mask_id: int,
    objective: str = "mdm",
    estimator: str = "mc",
    mc_num: int = 128,
    batch_size: int = 32,
    cfg: float = 0.0,
    seed: int = 0,
    bos_id: int | None = None,
    device: torch.device | str = "cpu",
    block_fn: Callable | None = None,
    block_size: int | None = None,
) -> LikelihoodEstimate:
    """log p(answer | prompt) by the chosen estimator (ARM: always exact; block diffusion: the
    block ELBO through `block_fn`, the training layout). Raises ValueError on bad options
    (unknown estimator, mc_num not a multiple of the batch, CFG on an ARM)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    answer = torch.tensor(list(answer_ids), dtype=torch.long, device=device)
    a_len = len(answer)
    if a_len == 0:
        return LikelihoodEstimate(0.0, 0.0, 0, estimator)
    if objective == "arm":
        if cfg:
            raise ValueError("classifier-free guidance (cfg) applies to masked diffusion models")
        if bos_id is None:
            raise ValueError("an ARM needs bos_id to score an answer without a prompt")
        logp, _ = arm_log_likelihood(model_fn, prompt, answer, bos_id)
        return LikelihoodEstimate(logp, 0.0, a_len, "exact")
    if estimator == "chain_rule":
        logp = chain_rule_log_likelihood(model_fn, prompt, answer, mask_id, batch_size, cfg)
        return LikelihoodEstimate(logp, 0.0, a_len, estimator)
    generator = pair_generator(seed, prompt_ids, answer_ids)
    if objective == "block":
        samples = block_elbo_samples(
            block_fn,
            prompt,
            answer,
            mask_id,
            block_size,
            estimator,
            mc_num,
            batch_size,
            cfg,
            generator,
        )
        result = summarize_samples(samples, batch_size, estimator)
        result.num_tokens = a_len
        return result
    draw = mc_samples if estimator == "mc" else bernoulli_samples
    samples = draw(model_fn, prompt, answer, mask_id, mc_num, batch_size, cfg, generator)
    result = summarize_samples(samples, batch_size, estimator)
    result.num_tokens = a_len
    return result
