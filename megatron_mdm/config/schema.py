"""The experiment schema: one dataclass per YAML section, each field documented by the string
below it, and each section's checks of its own fields.

Every string setting with a fixed set of values is a ``Literal`` (``choices.py``, which also
exports the values as tuples for the modules that consume the setting): the YAML reader rejects
any other value (``coerce.py``). Each section's ``validate(fail)`` checks only its own fields;
:meth:`ExperimentConfig.validate` runs them in section order, then the rules that tie sections
together (``rules.py``: parallel layout vs model shape, FP8 GEMM shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NoReturn

from megatron_mdm.config.checks import (
    ConfigError,
    Fail,
    finite,
    non_negative,
    positive,
    short,
    step_schedule,
    within,
)
from megatron_mdm.config.choices import (
    AttentionBackend,
    BlockTSampling,
    DataValidation,
    DiffusionLoss,
    FP8GradFormat,
    FP8Recipe,
    LogitsMode,
    LRSchedule,
    NonFinitePolicy,
    Objective,
    Precision,
    Recompute,
    SyntheticCorpus,
    TokenizerType,
    TransformerImpl,
    TSampling,
    WandbMode,
    ZeroStage,
)
from megatron_mdm.config.coerce import check_types
from megatron_mdm.config.rules import (
    check_adaptation,
    check_block,
    check_fp8,
    check_layout,
    check_sampling,
)
from megatron_mdm.config.sft_schema import ChatTemplateConfig, SFTConfig

__all__ = [
    "ChatTemplateConfig",
    "CheckpointConfig",
    "DataConfig",
    "DiffusionConfig",
    "ExperimentConfig",
    "LoggingConfig",
    "ModelConfig",
    "ParallelConfig",
    "SFTConfig",
    "TokenizerConfig",
    "TrainConfig",
    "validate",
]

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizerConfig:
    """``data.tokenizer``: which tokenizer turns text into ids (``data/tokenizers.py``)."""

    type: TokenizerType = "byte"
    """byte: 256 byte ids, needs no file (quickstart, tests); sentencepiece: a ``.model`` file;
    hf: a Hugging Face tokenizer folder or ``tokenizer.json``, read from local files only."""
    model: str | None = None
    """Local path of the tokenizer (sentencepiece: the .model file; hf: its folder or
    tokenizer.json); required for sentencepiece and hf, unused for byte."""

    def validate(self, fail: Fail) -> None:
        """A model file for the tokenizers that need one."""
        if self.type in ("sentencepiece", "hf") and not self.model:
            fail("data.tokenizer.model", f"required for tokenizer type {self.type}")


@dataclass
class DataConfig:
    """``data``: the pretraining corpus and how it is split and read."""

    text_file: str | None = None
    """A text file with one document per line, tokenized at start-up; None (and no blend): the
    built-in synthetic corpus, so a smoke run needs no data."""
    synthetic: SyntheticCorpus = "standard"
    """The built-in corpus's word lists (``data/synthetic_corpus.py``): standard (169 words) or
    small (48 words, the quickstart's: a tiny byte-level model learns to spell them in minutes).
    Used only without ``text_file`` and ``blend``."""
    blend: list | None = None
    """Preprocessed Megatron datasets, ``[w1, prefix1, w2, prefix2, ...]``: each prefix names a
    ``.bin``/``.idx`` pair, sampled in proportion to its weight. Prefixes alone, ``[prefix]`` or
    ``[prefix1, prefix2]``, weigh each by its number of tokens (as if the files were one).
    Excludes ``text_file``."""
    split: str = "969,30,1"
    """Train, valid, test weights (Megatron style): the share of documents in each split."""
    validate: DataValidation = "sample"
    """Checks of every dataset at start-up (docs/design.md §12): sample: the .idx header, sizes
    and pointers in full, token ids < vocabulary in evenly spread windows of the .bin (whole
    .bin up to 64 MiB); full: every token id as well (reads the whole .bin on every rank)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer of the corpus; it also sets the vocabulary when model.vocab_size is null."""
    num_workers: int = 0
    """Data-loader worker processes per rank; 0 reads in the training process."""

    def check(self, fail: Fail) -> None:
        """Worker count, split weights, blend entries, the text_file / blend exclusion. (Named
        check, not validate like the other sections': ``data.validate`` is a setting.)"""
        non_negative(fail, "data.num_workers", self.num_workers)
        _check_split(fail, self.split)
        if self.blend is not None:
            _check_blend(fail, self.blend)
            if self.text_file is not None:
                fail("data.blend", "data.blend and data.text_file are mutually exclusive")
        self.tokenizer.validate(fail)


def _check_split(fail: Fail, split: str) -> None:
    parts = [s.strip() for s in split.split(",")]
    if len(parts) != 3 or not all(s.isdigit() for s in parts):
        fail("data.split", f"expected three comma separated non-negative ints, got {split!r}")
    if sum(int(s) for s in parts) == 0:
        fail("data.split", f"weights sum to 0 in {split!r}")


def _check_blend(fail: Fail, blend: list) -> None:
    if blend and all(isinstance(x, str) for x in blend):  # prefixes only: implicit weights
        if not all(blend):
            fail("data.blend", f"a dataset prefix is empty in {short(blend)}")
        return
    if not blend or len(blend) % 2:
        fail(
            "data.blend",
            f"expected [weight, prefix, weight, prefix, ...] or [prefix, ...], got {short(blend)}",
        )
    for i in range(0, len(blend), 2):
        weight, prefix = blend[i], blend[i + 1]
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            fail("data.blend", f"item {i} should be a numeric weight, got {short(weight)}")
        if not (math.isfinite(weight) and weight >= 0):
            fail("data.blend", f"item {i}: weight must be >= 0, got {weight}")
        if not isinstance(prefix, str) or not prefix:
            fail("data.blend", f"item {i + 1} should be a dataset prefix, got {short(prefix)}")
    if sum(blend[0::2]) <= 0:
        fail("data.blend", "weights sum to 0")


@dataclass
class ModelConfig:
    """``model``: the transformer's shape and how it is computed."""

    num_layers: int = 4
    """Transformer blocks; parallel.pipeline must divide it."""
    hidden_size: int = 256
    """Width of the residual stream; a multiple of num_attention_heads (head dim = ratio)."""
    num_attention_heads: int = 4
    """Query heads per layer."""
    num_query_groups: int | None = None
    """KV heads (grouped-query attention); None: one KV head per query head (plain MHA)."""
    ffn_hidden_size: int | None = None
    """Inner width of the SwiGLU MLP; None: 4 * hidden_size."""
    seq_length: int = 128
    """Tokens per training sequence (and the rotary table length)."""
    objective: Objective = "mdm"
    """mdm: bidirectional masked diffusion (the point of this project); arm: the causal
    next-token baseline trained by the same stack, for like-for-like comparisons; block: block
    diffusion (BD3-LM): blocks of diffusion.block_size tokens denoised in parallel, generated
    left to right with an exact KV cache (docs/design.md §11)."""
    transformer_impl: TransformerImpl = "local"
    """local: megatron-core's plain torch layers (run anywhere, FP8 through kernels/);
    transformer_engine: NVIDIA TE layers (GPU, needed for sequence parallelism)."""
    rotary_base: int = 10000
    """RoPE base frequency (theta)."""
    rope_scaling_factor: float | None = None
    """Llama 3 RoPE scaling (megatron-core's: low/high frequency factors 1 and 4, original
    context 8192) with this factor; None: plain RoPE. Set by importing a Llama 3 model."""
    qkv_bias: bool = False
    """A bias on the QKV projection (megatron-core add_qkv_bias), as in Qwen2."""
    vocab_size: int | None = None
    """Ids the tokenizer emits; None: taken from the tokenizer at run time."""
    mask_token_id: int | None = None
    """Id of [MASK]; None: vocab_size (one id past the tokenizer's)."""
    make_vocab_size_divisible_by: int = 128
    """The embedding and output rows are padded to a multiple of this (and of parallel.tensor)
    for even GEMM shapes; the padding rows are never real tokens."""
    norm_epsilon: float = 1e-5
    """Epsilon of the RMSNorm layers."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    attention_backend: AttentionBackend = "sdpa"
    """Core attention of the local layers: sdpa (torch scaled_dot_product_attention: flash or
    efficient kernels on GPU) or unfused (megatron's DotProductAttention). TE uses its own."""
    recompute: Recompute = "none"
    """Activation checkpointing, trading compute for memory: none, full (whole layers) or
    selective (core attention only)."""
    sequence_parallel: bool = False
    """Split norm and dropout activations along the sequence over the tensor-parallel group;
    needs parallel.tensor > 1 and Transformer Engine."""
    logits: LogitsMode = "masked"
    """Where training computes the output layer and the cross-entropy (objective mdm and block;
    ignored for arm, whose loss reads every position): masked: only at the positions that carry
    loss (masked tokens; SFT: masked response tokens); all: every position, as inference does.
    Same loss and gradients (docs/design.md §14.1)."""
    ce_chunk_tokens: int = 0
    """Rows per chunk of the output layer + cross-entropy (forward and backward) in training:
    only one chunk's logits exist at a time (kernels/chunked_ce.py); 0: all rows at once."""

    @property
    def kv_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    def validate(self, fail: Fail) -> None:
        """Positive sizes, finite floats, heads vs width and query groups."""
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "ffn_hidden_size",
            "seq_length",
            "rotary_base",
            "vocab_size",
            "make_vocab_size_divisible_by",
            "norm_epsilon",
            "init_std",
            "rope_scaling_factor",
        ):
            positive(fail, f"model.{name}", getattr(self, name))
        finite(fail, "model.norm_epsilon", self.norm_epsilon)
        finite(fail, "model.init_std", self.init_std)
        non_negative(fail, "model.mask_token_id", self.mask_token_id)
        non_negative(fail, "model.ce_chunk_tokens", self.ce_chunk_tokens)
        if self.sequence_parallel and self.transformer_impl != "transformer_engine":
            fail(
                "model.sequence_parallel",
                "needs model.transformer_impl=transformer_engine (megatron-core's local norms "
                "do not support sequence parallelism)",
            )
        if self.hidden_size % self.num_attention_heads:
            fail(
                "model.hidden_size",
                f"{self.hidden_size} is not divisible by model.num_attention_heads "
                f"= {self.num_attention_heads}",
            )
        if self.num_attention_heads % self.kv_groups:
            fail(
                "model.num_query_groups",
                f"model.num_attention_heads = {self.num_attention_heads} is not divisible by "
                f"{self.kv_groups} query groups",
            )


@dataclass
class DiffusionConfig:
    """``diffusion``: how masks are drawn and how the masked-token loss is weighted."""

    eps: float = 1e-3
    """Floor of the masking probability p = (1 - eps) * t + eps, which keeps the 1/p loss
    weight finite."""
    var_len_prob: float = 0.01
    """Fraction of batches cropped to a random shorter length, so the model also sees short
    sequences (SMDM's recipe); 0 trains at model.seq_length only."""
    t_sampling: TSampling = "uniform"
    """How t is drawn per sequence: uniform (independent draws) or stratified (one draw spread
    evenly over the global batch: a lower-variance loss estimate)."""
    loss: DiffusionLoss = "smdm"
    """Weight of each masked token's CE (both average over all tokens): smdm: 1 / p (SMDM,
    LLaDA); mdlm: MDLM's log-linear schedule weight 1 / t, with t recovered from p."""

    block_size: int | None = None
    """model.objective=block: tokens per block B, dividing model.seq_length (B = L: the MDM,
    B = 1: an ARM; docs/design.md §11); also the B of validation, sampling and likelihood."""
    block_t_sampling: BlockTSampling = "block"
    """model.objective=block: one t per block (BD3-LM) or one per sequence, shared by its blocks."""
    block_size_schedule: list | None = None
    """model.objective=block: training B by step, [[step, B], ...] piecewise constant from step 0
    (LLaDA2.0's warmup-stable-decay); ends at diffusion.block_size. None: block_size throughout."""

    shift: bool = False
    """Dream's shifted prediction: the output at position i predicts token i + 1, so a causal
    LM's head is reused unchanged; position i's logits are the output at i - 1, position 0's the
    output at 0 (docs/design.md §13.4). model.objective=mdm only."""
    attention_anneal_steps: int = 0
    """DiffuLLaMA's attention annealing: over the first N training steps the attention moves
    from causal to bidirectional, query i seeing keys j <= i + floor((L - 1) * step / N)
    (docs/design.md §13.5). 0: bidirectional from the start. model.objective=mdm only."""

    def lookahead_at(self, step: int, seq_length: int) -> int | None:
        """Keys past the query that step `step` may attend to (annealing); None: all of them."""
        n = self.attention_anneal_steps
        if n <= 0 or step >= n:
            return None
        return (seq_length - 1) * max(step, 0) // n

    def block_size_at(self, step: int) -> int | None:
        """The training block size at `step` (a pure function of the step: exact on resume)."""
        sizes = [b for start, b in self.block_size_schedule or () if start <= step]
        return sizes[-1] if sizes else self.block_size

    def validate(self, fail: Fail) -> None:
        """eps and var_len_prob are probabilities; block size and schedule are well formed."""
        finite(fail, "diffusion.eps", self.eps)
        within(fail, "diffusion.eps", self.eps)
        within(fail, "diffusion.var_len_prob", self.var_len_prob, closed=True)
        positive(fail, "diffusion.block_size", self.block_size)
        step_schedule(fail, "diffusion.block_size_schedule", self.block_size_schedule)
        non_negative(fail, "diffusion.attention_anneal_steps", self.attention_anneal_steps)


@dataclass
class ParallelConfig:
    """``parallel``: how the model and its optimizer are split over the ranks (data parallelism
    takes the ranks left over: world size / (tensor * pipeline))."""

    tensor: int = 1
    """Tensor-parallel ranks per layer; must divide heads, query groups and the FFN size."""
    pipeline: int = 1
    """Pipeline stages; must divide model.num_layers."""
    zero_stage: ZeroStage = 0
    """DeepSpeed ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters sharded
    over data-parallel ranks. 2 and 3 cannot be used with pipeline > 1."""
    offload_optimizer: bool = False
    """Keep the Adam states in CPU memory (ZeRO-Offload); needs zero_stage >= 1."""

    def validate(self, fail: Fail) -> None:
        """Positive sizes, and the ZeRO stage against pipelining and offload."""
        positive(fail, "parallel.tensor", self.tensor)
        positive(fail, "parallel.pipeline", self.pipeline)
        if self.zero_stage in (2, 3) and self.pipeline > 1:
            fail(
                "parallel.zero_stage",
                "ZeRO-2/3 cannot be combined with pipeline parallelism (a DeepSpeed "
                "limitation); use parallel.zero_stage 0 or 1",
            )
        if self.offload_optimizer and self.zero_stage < 1:
            fail("parallel.offload_optimizer", "requires parallel.zero_stage >= 1")


@dataclass
class TrainConfig:
    """``train``: the optimisation run: batch sizes, schedule, optimizer, precision, outputs."""

    seed: int = 1234
    """Seeds every keyed random draw (init, masks, data order): same seed, same run."""
    micro_batch_size: int = 8
    """Sequences per forward pass on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all ranks; the rest is gradient accumulation."""
    max_steps: int = 100
    """Optimizer steps of the run."""
    lr: float = 2e-4
    """Peak learning rate, reached after warmup_steps."""
    min_lr: float = 2e-5
    """Learning rate at the end of the cosine decay (and after it)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr; longer than the decay (a short run) is clamped to it, with a
    warning at start-up."""
    lr_schedule: LRSchedule = "cosine"
    """After warmup: cosine (decay to min_lr by lr_decay_steps, SMDM); wsd (warmup-stable-decay,
    LLaDA: lr until the last lr_decay_fraction of the post-warmup steps, then linear to min_lr);
    constant (lr to the end). Formulas: docs/design.md §10."""
    lr_decay_steps: int | None = None
    """Step at which the decay (cosine or wsd) reaches min_lr; None: the end of the run."""
    lr_decay_fraction: float = 0.1
    """wsd only: the share of the steps between warmup and lr_decay_steps spent decaying."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay; not applied to 1-D parameters (norms)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0: no clipping."""
    adam_beta1: float = 0.9
    """AdamW first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW second-moment decay."""
    adam_eps: float = 1e-8
    """AdamW denominator epsilon."""
    precision: Precision = "fp32"
    """Compute precision: fp32; bf16 (fp32 master weights); fp8 (bf16 plus FP8 GEMMs, through
    Transformer Engine or the local kernels/ layers)."""
    output_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl, TensorBoard events and the resolved config go."""
    eval_interval: int = 0
    """Steps between validation-loss evaluations; 0: no periodic evaluation."""
    eval_iters: int = 0
    """Validation batches per evaluation; >= 1 when eval_interval > 0."""
    init_from: str | None = None
    """Start from these weights only (fresh optimizer, step 0): a training checkpoint or an
    exported hf/llada/smdm folder, at any TP/PP. For fine-tuning and continued pretraining."""
    fp8_recipe: FP8Recipe | None = None
    """precision=fp8 scaling: delayed (amax history, TE only) or current (per-tensor amax of
    this step); None: delayed with Transformer Engine, current with the local FP8 layers."""
    fp8_grad_format: FP8GradFormat = "e5m2"
    """precision=fp8 format of output gradients: e5m2 (more range) or e4m3 (more precision)."""
    nonfinite: NonFinitePolicy = "skip"
    """A step whose loss or gradient norm is inf/NaN: skip (no optimizer update, counted in the
    metrics; the run stops after max_nonfinite_steps in a row) or stop (at the first one). Either
    way no checkpoint with non-finite weights is written."""
    max_nonfinite_steps: int = 10
    """nonfinite=skip: this many non-finite steps in a row stop the run (naming the step)."""
    sample_interval: int = 0
    """Steps between a few samples from sample_prompt written to samples.jsonl and TensorBoard
    (rank 0, TP = PP = 1 and ZeRO < 3 only); 0: off."""
    sample_prompt: str = "The "
    """The fixed prompt of the training-time samples."""
    sample_length: int = 32
    """Tokens generated per training-time sample (one block, one token revealed per step)."""
    sample_count: int = 2
    """Samples per sample_interval (keyed by seed, step and index: reproducible)."""

    @property
    def decay_steps(self) -> int:
        return self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps

    @property
    def effective_warmup(self) -> int:
        """warmup_steps, clamped to the decay end (a run shorter than its warmup)."""
        return min(self.warmup_steps, self.decay_steps)

    def validate(self, fail: Fail) -> None:
        """Ranges of every number, then the schedule and batch arithmetic."""
        non_negative(fail, "train.seed", self.seed)
        positive(fail, "train.micro_batch_size", self.micro_batch_size)
        positive(fail, "train.global_batch_size", self.global_batch_size)
        positive(fail, "train.max_steps", self.max_steps)
        positive(fail, "train.lr_decay_steps", self.lr_decay_steps)
        non_negative(fail, "train.warmup_steps", self.warmup_steps)
        non_negative(fail, "train.eval_interval", self.eval_interval)
        non_negative(fail, "train.eval_iters", self.eval_iters)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "adam_eps"):
            finite(fail, f"train.{name}", getattr(self, name))
        positive(fail, "train.lr", self.lr)
        non_negative(fail, "train.min_lr", self.min_lr)
        non_negative(fail, "train.weight_decay", self.weight_decay)
        non_negative(fail, "train.grad_clip", self.grad_clip)
        positive(fail, "train.adam_eps", self.adam_eps)
        within(fail, "train.adam_beta1", self.adam_beta1)
        within(fail, "train.adam_beta2", self.adam_beta2)
        within(fail, "train.lr_decay_fraction", self.lr_decay_fraction, closed=True)
        positive(fail, "train.max_nonfinite_steps", self.max_nonfinite_steps)
        non_negative(fail, "train.sample_interval", self.sample_interval)
        positive(fail, "train.sample_length", self.sample_length)
        positive(fail, "train.sample_count", self.sample_count)
        self._check_schedule(fail)
        if not self.output_dir:
            fail("train.output_dir", "must not be empty")

    def _check_schedule(self, fail: Fail) -> None:
        if self.global_batch_size % self.micro_batch_size:
            fail(
                "train.global_batch_size",
                f"{self.global_batch_size} is not divisible by train.micro_batch_size "
                f"= {self.micro_batch_size}",
            )
        if self.min_lr > self.lr:
            fail("train.min_lr", f"{self.min_lr} is larger than train.lr = {self.lr}")
        if self.eval_interval > 0 and self.eval_iters < 1:
            fail("train.eval_iters", "must be >= 1 when train.eval_interval > 0")


@dataclass
class CheckpointConfig:
    """``checkpoint``: when training state is saved and where a run resumes from."""

    save_interval: int = 0
    """Steps between checkpoints during the run; 0: none (the last one is save_at_end's)."""
    keep_last: int = 2
    """Checkpoints kept in train.output_dir; older ones are deleted after a save."""
    resume: str = "auto"
    """auto: the latest checkpoint in train.output_dir if there is one; none: start fresh;
    otherwise the path of a checkpoint to resume (so a plain str, not a Literal)."""
    save_at_end: bool = True
    """Save a checkpoint when the run reaches train.max_steps."""

    def validate(self, fail: Fail) -> None:
        """Interval and retention counts, a non-empty resume."""
        non_negative(fail, "checkpoint.save_interval", self.save_interval)
        if self.keep_last < 1:
            fail("checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")
        if not self.resume:
            fail("checkpoint.resume", "must be auto, none or a checkpoint path")


@dataclass
class LoggingConfig:
    """``logging``: what a run reports while it trains."""

    interval: int = 10
    """Steps between log lines and metrics.jsonl records (the last step is always logged)."""
    tensorboard: bool = True
    """Also write TensorBoard events under train.output_dir."""
    progress: bool = True
    """Show a progress bar on the logging rank."""
    peak_tflops: float | None = None
    """Per-device peak TFLOP/s, the denominator of MFU; None: a known GPU's dense bf16 peak, and
    on CPUs or unknown GPUs MFU is n/a (null)."""
    wandb: bool = False
    """Also log the metrics (and samples) to Weights & Biases; needs the wandb package."""
    wandb_project: str = "megatron-mdm"
    """The W&B project; the run is named after train.output_dir and resumes with it."""
    wandb_mode: WandbMode = "online"
    """online, or offline (files under <output_dir>/wandb, uploaded later by `wandb sync`)."""

    def validate(self, fail: Fail) -> None:
        """A positive log interval and peak, a W&B project name."""
        if self.interval < 1:
            fail("logging.interval", f"must be >= 1, got {self.interval}")
        finite(fail, "logging.peak_tflops", self.peak_tflops)
        positive(fail, "logging.peak_tflops", self.peak_tflops)
        if self.wandb and not self.wandb_project:
            fail("logging.wandb_project", "must not be empty when logging.wandb is on")


@dataclass
class ExperimentConfig:
    """One run: every section of the YAML file, each with its defaults."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: shape, objective, implementation."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Masking and loss weighting of the mdm and block objectives (unused by arm)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor / pipeline / ZeRO layout; data parallelism takes the remaining ranks."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch sizes, schedule, optimizer, precision and the output folder."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving and resuming."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Log lines, TensorBoard, progress bar, MFU."""
    data: DataConfig = field(default_factory=DataConfig)
    """The pretraining corpus and its tokenizer."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (``mdm sft`` only)."""
    source: str = field(default="<defaults>", compare=False, metadata={"key": False})
    """Where the config came from, for error messages only: not a YAML key, and two configs
    with the same settings are equal whichever file they were read from."""
    explicit: frozenset[str] = field(default=frozenset(), compare=False, metadata={"key": False})
    """Dotted keys the file or an override set (the rest are defaults): what a causal LM given
    as train.init_from may fill in, and must agree with (checkpointing/causal_import.py)."""

    def gradient_accumulation_steps(self, dp: int) -> int:
        """Micro-batches per optimizer step on each data-parallel rank."""
        per_step = self.train.micro_batch_size * dp
        if dp < 1 or self.train.global_batch_size % per_step:
            raise ConfigError(
                f"{self.train.global_batch_size} is not divisible by train.micro_batch_size "
                f"* data-parallel size = {self.train.micro_batch_size} * {dp}",
                source=self.source,
                key="train.global_batch_size",
            )
        return self.train.global_batch_size // per_step

    def _fail(self, key: str, message: str) -> NoReturn:
        """Raise the ConfigError for ``key`` of this config (the ``fail`` of every check)."""
        raise ConfigError(message, source=self.source, key=key)

    def validate(self) -> None:
        """Check types, then each section on its own, then the rules across sections; raise
        the first problem as a one-line ConfigError naming the source and the key."""
        check_types(self, "", self.source)
        for check in (
            self.model.validate,
            self.diffusion.validate,
            self.parallel.validate,
            self.train.validate,
            self.checkpoint.validate,
            self.logging.validate,
            self.data.check,  # `data.validate` is a setting (docs/design.md §12)
            self.sft.validate,
        ):
            check(self._fail)
        check_layout(self, self._fail)
        check_block(self, self._fail)
        check_adaptation(self, self._fail)
        check_sampling(self, self._fail)
        if self.train.precision == "fp8":
            check_fp8(self, self._fail)


def validate(cfg: ExperimentConfig) -> None:
    """Check types and constraints of ``cfg`` (see :meth:`ExperimentConfig.validate`)."""
    cfg.validate()
