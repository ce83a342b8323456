"""Per-GPU memory estimate for a config, before anything is launched.

Meant for choosing TP / PP / ZeRO / micro-batch for a cluster, not for predicting the allocator's
peak: it counts the tensors that must live on a GPU during a step and leaves out the CUDA
context, NCCL buffers, DeepSpeed's bucket buffers and fragmentation (add 2-5 GB in practice).

Model states (ZeRO paper accounting, Rajbhandari et al. 2020, for a rank holding P parameters):
  bf16 / fp8:  weights 2P + grads 2P + Adam 12P (fp32 master, m, v)
  fp32:        weights 4P + grads 4P + Adam 8P  (the weights are the master copy)
ZeRO splits them over the data-parallel size D: stage 1 the Adam states, 2 also the grads, 3 also
the weights. `parallel.offload_optimizer` moves the Adam states to CPU memory. (DeepSpeed's bf16
path at stage 0 keeps some fp32 buffers this accounting does not model; stage 0 is rarely the
choice on GPUs anyway.)

P is the parameter count of the busiest model-parallel rank: its share of the transformer layers
split over TP, plus the input embedding (first stage) and output layer (last stage), each split
over TP; with PP = 1 one rank holds both.

Activations: the tensors one transformer layer saves for backward, for micro-batch b, sequence
s, hidden h, a heads, g KV groups, FFN width f, 2-byte activations, no dropout (this model has
none), no recomputation, no sequence parallelism. It follows Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models"), whose GeLU/dropout layer stores
s*b*h*(34 + 5*a*s/h) bytes; for this model's SwiGLU/GQA/no-dropout block the same bookkeeping gives
  norm inputs + outputs (replicated over TP):          8 * s*b*h
  Q, K, V (after RoPE), attention output:              s*b*h * (4 + 4*g/a)      / TP
  SwiGLU: gate, up, silu(gate), down-proj input:       8 * s*b*f                / TP
  attention probabilities (unfused local attention):   2 * a*s^2*b              / TP
The s^2 term is charged only to `model.attention_backend=unfused` with the local spec: Transformer
Engine's fused attention and the local spec's SDPA core attention (flash / memory-efficient
kernels on GPU) keep only per-row softmax statistics. The last stage adds the logits: the bf16 logits kept alive through the loss plus the
fp32 softmax that vocab-parallel cross-entropy saves, 6*r*V/TP for r logit rows: r = s*b, half
of it with `model.logits=masked` (mdm, block: the expected masked share), at most
`model.ce_chunk_tokens` when chunked (docs/design.md §14). Under 1F1B pipelining the first
stage holds min(PP, micro-batches) micro-batches in flight (about all L layers' worth, whatever PP
is) and the last stage one plus the logits; the estimate reports the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mdm.config import ExperimentConfig, ModelConfig
from megatron_mdm.model.accounting import non_embedding_params

GiB = float(1 << 30)

# bytes per parameter: (weights, gradients, optimizer states)
STATE_BYTES = {"bf16": (2, 2, 12), "fp8": (2, 2, 12), "fp32": (4, 4, 8)}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the busiest GPU (and, with optimizer offload, in its host's CPU memory)."""

    params_per_rank: int  # parameters of the busiest TP x PP rank, before ZeRO-3 splits them
    data_parallel: int
    weights: float
    grads: float
    optimizer: float
    activations: float  # transformer layers, all micro-batches in flight
    logits: float
    cpu_optimizer: float = 0.0  # offloaded Adam states, per GPU

    @property
    def model_states(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return self.model_states + self.activations + self.logits


def params_per_rank(m: ModelConfig, padded_vocab: int, tensor: int = 1, pipeline: int = 1) -> int:
    """Parameters on the busiest model-parallel rank.

    Counts the per-layer weights once per layer share, the embedding and output layer on the
    stages that own them, and the final norm on the last stage; norms are replicated over TP
    but are too small to matter, so they are divided like the rest.
    """
    layers_total = non_embedding_params(m) - m.hidden_size  # without the final norm
    per_stage_layers = layers_total // pipeline
    embedding = padded_vocab * m.hidden_size
    if pipeline == 1:
        owned = per_stage_layers + 2 * embedding + m.hidden_size
    else:
        owned = per_stage_layers + embedding + m.hidden_size  # last stage: output layer + norm
    return -(-owned // tensor)


def model_state_bytes(
    params: int, precision: str, zero_stage: int, data_parallel: int, offload: bool = False
) -> tuple[float, float, float, float]:
    """(weights, grads, optimizer on GPU, optimizer on CPU) in bytes for one rank's `params`."""
    w, g, o = (float(params * b) for b in STATE_BYTES[precision])
    dp = max(1, data_parallel)
    if zero_stage >= 1:
        o /= dp
    if zero_stage >= 2:
        g /= dp
    if zero_stage >= 3:
        w /= dp
    if offload and zero_stage >= 1:
        return w, g, 0.0, o
    return w, g, o, 0.0


def activation_bytes_per_layer(
    m: ModelConfig, micro_batch: int, seq: int, tensor: int = 1, flash: bool = False
) -> float:
    """Bytes one transformer layer saves for backward for one micro-batch (module docstring)."""
    s, b, h, a, f = seq, micro_batch, m.hidden_size, m.num_attention_heads, m.ffn_size
    g = m.kv_groups
    replicated = 8.0 * s * b * h
    split = s * b * h * (4.0 + 4.0 * g / a) + 8.0 * s * b * f
    if not flash:
        split += 2.0 * a * s * s * b
    return replicated + split / tensor


def stores_no_attention_scores(m: ModelConfig) -> bool:
    """True when core attention saves no s x s probabilities for backward (module docstring)."""
    return m.transformer_impl == "transformer_engine" or m.attention_backend == "sdpa"


def logits_bytes(rows: float, padded_vocab: int, tensor: int = 1) -> float:
    return 6.0 * rows * padded_vocab / tensor


def logit_rows(m: ModelConfig, micro_batch: int) -> float:
    """Rows of logits alive at once in training (module docstring)."""
    rows = float(m.seq_length * micro_batch)
    if m.logits == "masked" and m.objective != "arm":
        rows /= 2
    return min(rows, m.ce_chunk_tokens) if m.ce_chunk_tokens > 0 else rows


def estimate_memory(cfg: ExperimentConfig, padded_vocab: int, gpus: int) -> MemoryEstimate:
    """Memory per GPU for `cfg` on `gpus` GPUs (a multiple of TP x PP)."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    model_parallel = p.tensor * p.pipeline
    if gpus < 1 or gpus % model_parallel:
        raise ValueError(
            f"{gpus} GPUs is not a multiple of parallel.tensor * parallel.pipeline = "
            f"{p.tensor} * {p.pipeline}"
        )
    dp = gpus // model_parallel
    params = params_per_rank(m, padded_vocab, p.tensor, p.pipeline)
    weights, grads, opt, cpu = model_state_bytes(
        params, t.precision, p.zero_stage, dp, p.offload_optimizer
    )
    flash = stores_no_attention_scores(m)
    # block diffusion runs [x_t; x_0]: the layers see 2L positions, the output layer L
    layer_seq = m.seq_length * (2 if m.objective == "block" else 1)
    per_layer = activation_bytes_per_layer(m, t.micro_batch_size, layer_seq, p.tensor, flash)
    stage_layers = m.num_layers // p.pipeline
    logits = logits_bytes(logit_rows(m, t.micro_batch_size), padded_vocab, p.tensor)
    if p.pipeline == 1:
        activations = per_layer * stage_layers
    else:
        # 1F1B: the first stage has the most micro-batches in flight, the last has the logits.
        micro_batches = max(1, t.global_batch_size // (t.micro_batch_size * dp))
        first = per_layer * stage_layers * min(p.pipeline, micro_batches)
        last = per_layer * stage_layers
        activations, logits = (first, 0.0) if first >= last + logits else (last, logits)
    return MemoryEstimate(params, dp, weights, grads, opt, activations, logits, cpu)
