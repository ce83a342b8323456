"""`mdm config show CONFIG [overrides] [--gpus N]`: what a config amounts to before it is run.

Prints the resolved config as YAML (every default filled in, overrides applied) and then, as
YAML comments so the output still loads as a config, the numbers one checks before asking for
a cluster: parameter counts, FLOPs per token / step / run, and memory per GPU. No torch and no
process group, so it runs on a laptop against a config meant for 64 GPUs. The vocabulary is
`model.vocab_size`, else the tokenizer's real size when its model file is on this machine (a
sentencepiece model or an HF tokenizer, read locally), else the byte tokenizer's as a stand-in,
said so in a note. Without `--gpus` the estimate is for the most GPUs, up to 8, that the
config's batch and parallel layout run on (8 for the cluster configs, 2 for the quickstart).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_mdm.config import ExperimentConfig, check_world_size, load_config, to_dict
from megatron_mdm.data.byte_tokenizer import ByteTokenizer
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.model.accounting import flops_per_token, non_embedding_params, total_params
from megatron_mdm.model.memory import (
    GiB,
    MemoryEstimate,
    estimate_memory,
    stores_no_attention_scores,
)
from megatron_mdm.model.vocab import VocabLayout


@dataclass(frozen=True)
class ConfigSummary:
    vocab: VocabLayout
    vocab_note: str | None  # set when the tokenizer size is a stand-in, not the real one
    total_params: int
    non_embedding_params: int
    flops_per_token: float
    tokens_per_step: int
    flops_per_step: float
    run_tokens: int
    run_flops: float
    budget_flops: float  # 6 * N_nonembedding * tokens, the compute budget scaling laws use
    gpus: int
    memory: MemoryEstimate


DEFAULT_MAX_GPUS = 8


def tokenizer_size(cfg: ExperimentConfig) -> tuple[int, str]:
    """The tokenizer's id count and where it comes from: the byte tokenizer, the local model
    file of `data.tokenizer.model`, or (no such file here) the byte tokenizer as a stand-in."""
    tok = cfg.data.tokenizer
    byte = ByteTokenizer().vocab_size
    if tok.type == "byte":
        return byte, f"byte tokenizer: {byte} ids"
    if tok.model and Path(tok.model).expanduser().exists():
        size = build_tokenizer(tok.type, tok.model).vocab_size
        return size, f"{tok.type} tokenizer {tok.model}: {size} ids"
    return byte, (
        f"model.vocab_size is not set and data.tokenizer.model {tok.model} is not on this "
        f"machine; counted with the byte tokenizer's {byte} ids (set model.vocab_size for exact "
        "totals)"
    )


def vocab_layout(cfg: ExperimentConfig) -> tuple[VocabLayout, str | None]:
    """The model's vocabulary: `model.vocab_size` if set, else the tokenizer's (see
    `tokenizer_size`), with a note saying which."""
    m = cfg.model
    note = None
    size = m.vocab_size
    if size is None:
        size, note = tokenizer_size(cfg)
    layout = VocabLayout.build(
        size, m.mask_token_id, m.make_vocab_size_divisible_by, cfg.parallel.tensor
    )
    return layout, note


def default_gpus(cfg: ExperimentConfig, most: int = DEFAULT_MAX_GPUS) -> int:
    """The most GPUs, up to `most`, that `cfg` runs on (its world-size rule: a multiple of
    TP x PP whose data-parallel size divides the global batch in micro-batches)."""
    mp = cfg.parallel.tensor * cfg.parallel.pipeline
    t = cfg.train
    fits = [
        dp * mp
        for dp in range(1, max(1, most // mp) + 1)
        if t.global_batch_size % (t.micro_batch_size * dp) == 0
    ]
    return max(fits)


def summarize(cfg: ExperimentConfig, gpus: int = 8) -> ConfigSummary:
    vocab, note = vocab_layout(cfg)
    m, t = cfg.model, cfg.train
    n_nonemb = non_embedding_params(m)
    per_token = flops_per_token(m, vocab.padded_size)
    tokens_per_step = t.global_batch_size * m.seq_length
    run_tokens = tokens_per_step * t.max_steps
    return ConfigSummary(
        vocab=vocab,
        vocab_note=note,
        total_params=total_params(m, vocab.padded_size),
        non_embedding_params=n_nonemb,
        flops_per_token=per_token,
        tokens_per_step=tokens_per_step,
        flops_per_step=per_token * tokens_per_step,
        run_tokens=run_tokens,
        run_flops=per_token * run_tokens,
        budget_flops=6.0 * n_nonemb * run_tokens,
        gpus=gpus,
        memory=estimate_memory(cfg, vocab.padded_size, gpus),
    )


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n:,} ({n / scale:.3g}{unit})"
    return f"{n:,}"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _block_note(cfg: ExperimentConfig) -> list[str]:
    """Block diffusion counts the x_0 copy it trains beside x_t (docs/design.md §11)."""
    if cfg.model.objective != "block":
        return []
    d, seq = cfg.diffusion, cfg.model.seq_length
    schedule = f", schedule {d.block_size_schedule}" if d.block_size_schedule else ""
    return [
        f"  block diffusion (B = {d.block_size}{schedule}): each sample runs [x_t; x_0] = "
        f"{2 * seq} positions;",
        "  the x_0 copy costs compute: per token 2x the layer matmuls and 4x the dense attention "
        "of mdm",
    ]


def render(cfg: ExperimentConfig, gpus: int = 8) -> str:
    """The resolved YAML followed by the derived numbers as comments."""
    s = summarize(cfg, gpus)
    m, p, t = cfg.model, cfg.parallel, cfg.train
    mem = s.memory
    v = s.vocab
    layout = f"TP {p.tensor} x PP {p.pipeline} x DP {mem.data_parallel}"
    batch = f"global batch {t.global_batch_size} x seq {m.seq_length}"
    lines = [
        f"vocab: {v.tokenizer_size} tokenizer ids, [MASK] = {v.mask_id}, "
        f"{v.padded_size} embedding rows (padded)",
    ]
    if s.vocab_note:
        lines.append(f"  note: {s.vocab_note}")
    formula = "6 * (N_nonembedding + V*h) + 12 * L*h*s"
    if m.objective == "block":
        formula = "6 * (2*N_nonembedding + V*h) + 12 * L*h*4s"
    lines += [
        f"parameters: total {_count(s.total_params)}",
        f"  non-embedding {_count(s.non_embedding_params)} (layers + final norm)",
        f"FLOPs per token (training): {s.flops_per_token:.4g}  = {formula}",
        f"FLOPs per step: {s.flops_per_step:.4g}  ({s.tokens_per_step:,} tokens = {batch})",
        *_block_note(cfg),
        f"run: {t.max_steps:,} steps, {s.run_tokens:.4g} tokens, {s.run_flops:.4g} FLOPs",
        f"  compute budget C = 6 * N_nonembedding * tokens = {s.budget_flops:.4g}",
        f"memory per GPU on {gpus} GPU{'s' if gpus != 1 else ''} ({layout}, ZeRO-{p.zero_stage},"
        f" {t.precision}, micro-batch {t.micro_batch_size}):",
        f"  params on the busiest rank: {_count(mem.params_per_rank)}",
        f"  weights {_gib(mem.weights)}, grads {_gib(mem.grads)}, optimizer {_gib(mem.optimizer)}",
        f"  activations {_gib(mem.activations)}, logits {_gib(mem.logits)}"
        f" (no recomputation, {_attention_note(m)}; formula in megatron_mdm/model/memory.py)",
        f"  total {_gib(mem.total)} + framework overhead (CUDA context, NCCL/DeepSpeed buffers)",
    ]
    if mem.cpu_optimizer:
        lines.append(f"  optimizer offloaded to CPU: {_gib(mem.cpu_optimizer)} per GPU")
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    header = f"# resolved config: {cfg.source}\n"
    return header + body + "\n" + "\n".join(f"# {line}" for line in lines) + "\n"


def _attention_note(m) -> str:
    if stores_no_attention_scores(m):
        return "no s^2 attention scores: flash/fused attention"
    return "s^2 attention probabilities kept (unfused attention)"


def add_config_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs for the memory estimate (default: the most, up to 8, the config runs on)",
    )


def run_config_show_args(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    gpus = default_gpus(cfg) if args.gpus is None else args.gpus
    check_world_size(cfg, gpus)  # a config that cannot run on N GPUs says so, like train
    print(render(cfg, gpus), end="")
    return 0
