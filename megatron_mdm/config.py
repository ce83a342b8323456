"""Experiment configuration: dataclass schema, YAML loading, command-line overrides, validation.

One YAML file describes a run; ``section.key=value`` overrides tweak it from the command line.
Every mistake is reported as a one-line ``ConfigError`` naming the file and the dotted key, so a
typo fails before any process group, model or data loader is built. No torch here: the launcher
and the tools import this module on machines that may not have it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "ExperimentConfig",
    "LoggingConfig",
    "ModelConfig",
    "ParallelConfig",
    "SFTConfig",
    "TokenizerConfig",
    "TrainConfig",
    "check_world_size",
    "dump_yaml",
    "from_dict",
    "load_config",
    "to_dict",
    "validate",
]


class ConfigError(ValueError):
    """A bad configuration, reported as one line: ``source: key: message``.

    One line because it ends up in the log of every rank of a job and must stay greppable.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message
        parts = [p for p in (source, key, message) if p]
        super().__init__(re.sub(r"\s*\n\s*", " ", ": ".join(parts)))


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizerConfig:
    type: str = "byte"  # byte | sentencepiece | hf
    model: str | None = None  # path or HF name; required for sentencepiece and hf


@dataclass
class DataConfig:
    text_file: str | None = None  # one document per line; None = built-in synthetic corpus
    blend: list | None = None  # Megatron style [w1, prefix1, w2, prefix2, ...]
    split: str = "969,30,1"  # train,valid,test weights
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    num_workers: int = 0


@dataclass
class ModelConfig:
    num_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_query_groups: int | None = None  # None: one KV head per query head (plain MHA)
    ffn_hidden_size: int | None = None  # None: 4 * hidden_size
    seq_length: int = 128
    objective: str = "mdm"  # mdm | arm
    transformer_impl: str = "local"  # local | transformer_engine
    rotary_base: int = 10000
    vocab_size: int | None = None  # None: taken from the tokenizer at run time
    mask_token_id: int | None = None  # None: vocab_size (one id past the tokenizer's)
    make_vocab_size_divisible_by: int = 128
    norm_epsilon: float = 1e-5
    init_std: float = 0.02
    # Local spec core attention: "sdpa" (torch scaled_dot_product_attention: flash/efficient
    # kernels on GPU) or "unfused" (megatron's DotProductAttention). TE uses its own.
    attention_backend: str = "sdpa"
    recompute: str = "none"  # activation checkpointing: none | full | selective (core attention)
    sequence_parallel: bool = False  # with TP, Transformer Engine only

    @property
    def kv_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size


@dataclass
class DiffusionConfig:
    eps: float = 1e-3  # floor of the masking ratio t, keeps the 1/t loss weight finite
    var_len_prob: float = 0.01  # fraction of batches trained at a random shorter length
    t_sampling: str = "uniform"  # uniform | stratified
    loss: str = "smdm"  # smdm | mdlm


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False


@dataclass
class TrainConfig:
    seed: int = 1234
    micro_batch_size: int = 8
    global_batch_size: int = 8
    max_steps: int = 100
    lr: float = 2e-4
    min_lr: float = 2e-5
    warmup_steps: int = 0
    lr_decay_steps: int | None = None  # None: decay over the whole run (max_steps)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    precision: str = "fp32"  # fp32 | bf16 | fp8
    output_dir: str = "runs/default"
    eval_interval: int = 0  # 0: no periodic evaluation
    eval_iters: int = 0
    # Weights only (fresh optimizer, step 0): a training checkpoint or an exported hf/llada/smdm
    # folder, at any TP/PP. For fine-tuning and continued pretraining from converted weights.
    init_from: str | None = None
    # precision=fp8 scaling: delayed (TE only) | current (per-tensor amax of this step);
    # None: delayed with Transformer Engine, current with the local FP8 layers (kernels/).
    fp8_recipe: str | None = None
    fp8_grad_format: str = "e5m2"  # precision=fp8 output-gradient format: e5m2 | e4m3

    @property
    def decay_steps(self) -> int:
        return self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps


@dataclass
class CheckpointConfig:
    save_interval: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | none | PATH
    save_at_end: bool = True


@dataclass
class LoggingConfig:
    interval: int = 10
    tensorboard: bool = True
    progress: bool = True
    peak_tflops: float | None = None  # per-GPU peak, for MFU; None: MFU is not reported


@dataclass
class ChatTemplateConfig:
    """How chat messages before the answer become the prompt (data/sft.py ChatTemplate)."""

    message_format: str = "<|{role}|>\n{content}\n"
    generation_prefix: str = "<|assistant|>\n"
    use_tokenizer_template: bool = False  # the HF tokenizer's own apply_chat_template


@dataclass
class SFTConfig:
    """`mdm sft` (DESIGN.md §4); `mdm train` ignores this section."""

    data: list | str | None = None  # one file or a list of files (required by `mdm sft`)
    format: str = "auto"  # auto | prompt_response | chat | gsm8k | gsm8k_icot
    gsm8k_split_cot: bool = False  # SMDM: question -> CoT and question + CoT -> "#### answer"
    normalize: str = "sequence"  # sequence (LLaDA) | token (SMDM)
    truncation: str = "response"  # response | prompt_left | drop
    pad_to: str = "max"  # max (model.seq_length) | longest (longest example of the step)
    # Set: the run length is ceil(epochs * training examples / train.global_batch_size) steps,
    # replacing train.max_steps (known once the data is read). null: train.max_steps.
    epochs: float | None = None
    limit: int | None = None  # read only the first N lines of sft.data (quick runs); null: all
    shuffle: bool = True  # a fresh order each epoch, keyed by (seed, epoch)
    # Validation response loss (every train.eval_interval steps, train.eval_iters batches):
    # separate files, or a fraction of the examples held out (keyed by seed).
    valid_data: list | str | None = None
    valid_fraction: float = 0.0
    chat_template: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)

    @property
    def data_files(self) -> list[str]:
        return _as_list(self.data)

    @property
    def valid_files(self) -> list[str]:
        return _as_list(self.valid_data)


def _as_list(value: list | str | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    # Where the config came from, for error messages only: not a YAML key, and two configs
    # with the same settings are equal whichever file they were read from.
    source: str = field(default="<defaults>", compare=False)

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


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.2), not as a string (YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own message spans several lines with a source excerpt; keep position + problem.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # _Loader is a SafeLoader
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", source=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e), source=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"top level must be a mapping of sections, got {type(data).__name__}", source=path
        )
    return data


# --------------------------------------------------------------------------------------------
# Typed construction
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(value: Any, tp: Any, key: str, where: str, lenient: bool = True) -> Any:
    """Check ``value`` against annotation ``tp``; return it normalized (int -> float).

    ``lenient`` also takes strings that parse as floats for float fields, for YAML written
    by tools that follow YAML 1.1, where ``1e-4`` is a string.
    """
    base, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    choices = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(choices) > 1:
        for choice in choices:  # e.g. `list | str`: the first that fits
            try:
                return _coerce(value, choice, key, where, lenient)
            except ConfigError:
                pass
        names = " or ".join(_TYPE_NAMES.get(c, getattr(c, "__name__", str(c))) for c in choices)
        raise ConfigError(
            f"expected {names}{' or null' if optional else ''}, got {_short(value)}",
            source=where,
            key=key,
        )
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_short(value)}", source=where, key=key)
        return _build(base, value, key, where)
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value, ok = float(value), True
        elif lenient and isinstance(value, str):
            try:
                value, ok = float(value), True
            except ValueError:
                pass
    else:
        ok = isinstance(value, base)
    if not ok:
        expected = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
        if optional:
            expected += " or null"
        raise ConfigError(f"expected {expected}, got {_short(value)}", source=where, key=key)
    return value


def _unknown_key(cls: type, name: str, prefix: str, where: str) -> ConfigError:
    dotted = f"{prefix}.{name}" if prefix else str(name)
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    close = difflib.get_close_matches(str(name), fields, n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"unknown key {dotted}{hint}", source=where)


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            raise _unknown_key(cls, name, prefix, where)
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, where)
    return cls(**kwargs)


def _apply_override(cfg: ExperimentConfig, override: str) -> None:
    where = f"{cfg.source} (override {override})"
    dotted, sep, raw = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError("expected section.key=value", source=where)
    try:
        value = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError:
        value = raw  # e.g. a path with odd characters; the type check decides
    parts = dotted.split(".")
    obj: Any = cfg
    for i, name in enumerate(parts):
        prefix = ".".join(parts[:i])
        is_field = name != "source" and name in {f.name for f in dataclasses.fields(obj)}
        if not is_field:
            raise _unknown_key(type(obj), name, prefix, where)
        tp = _hints(type(obj))[name]
        is_section = dataclasses.is_dataclass(_unwrap_optional(tp)[0])
        if i == len(parts) - 1:
            if is_section:
                raise ConfigError(
                    f"{dotted} is a section; set {dotted}.<key>=value instead", source=where
                )
            setattr(obj, name, _coerce(value, tp, dotted, where))
        elif not is_section:
            raise _unknown_key(type(obj), ".".join(parts[i:]), prefix, where)
        else:
            obj = getattr(obj, name)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def from_dict(d: dict, source: str = "<dict>") -> ExperimentConfig:
    """Build and validate a config from a nested dict (e.g. one saved in a checkpoint)."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping of sections, got {_short(d)}", source=source)
    cfg = _build(ExperimentConfig, d, "", source)
    cfg.source = source
    validate(cfg)
    return cfg


def load_config(path: str | None, overrides: typing.Iterable[str] = ()) -> ExperimentConfig:
    """Read ``path`` (None: all defaults), apply ``section.key=value`` overrides, validate."""
    source = "<defaults>" if path is None else str(path)
    data = {} if path is None else _read_yaml(source)
    cfg = _build(ExperimentConfig, data, "", source)
    cfg.source = source
    for override in overrides:
        _apply_override(cfg, override)
    validate(cfg)
    return cfg


def to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict of every setting (no ``source``), ready for YAML or a checkpoint."""
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d


def dump_yaml(cfg: ExperimentConfig, path: str) -> None:
    """Write the full resolved config; via a temp file so a crash never leaves half a file."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def check_world_size(cfg: ExperimentConfig, world_size: int) -> int:
    """Return the data-parallel size for ``world_size`` ranks, or say which setting is off.

    Kept out of ``validate`` because the world size is only known once the job is launched.
    """
    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    if world_size < 1 or world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor * parallel.pipeline "
            f"= {tp} * {pp} = {tp * pp}",
            source=cfg.source,
            key="parallel.tensor" if tp > 1 else "parallel.pipeline",
        )
    dp = world_size // (tp * pp)
    mbs, gbs = cfg.train.micro_batch_size, cfg.train.global_batch_size
    if gbs % (mbs * dp):
        raise ConfigError(
            f"{gbs} is not divisible by train.micro_batch_size * data-parallel size "
            f"= {mbs} * {dp} = {mbs * dp} (world size {world_size}, tensor {tp}, pipeline {pp})",
            source=cfg.source,
            key="train.global_batch_size",
        )
    return dp


def _check_types(obj: Any, prefix: str, where: str) -> None:
    # A config built in code skipped the checks in _build; catch e.g. lr="1e-4" here.
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name == "source":
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_types(value, key, where)
        else:
            _coerce(value, hints[f.name], key, where, lenient=False)


def validate(cfg: ExperimentConfig) -> None:
    """Check types and cross-field constraints; raise the first problem as a ConfigError."""
    where = cfg.source
    _check_types(cfg, "", where)

    def fail(key: str, message: str) -> typing.NoReturn:
        raise ConfigError(message, source=where, key=key)

    def positive(key: str, value: int | float | None) -> None:
        if value is not None and not value > 0:
            fail(key, f"must be > 0, got {value}")

    def non_negative(key: str, value: int | float | None) -> None:
        if value is not None and not value >= 0:
            fail(key, f"must be >= 0, got {value}")

    def choice(key: str, value: str, options: tuple[str, ...]) -> None:
        if value not in options:
            fail(key, f"must be one of {', '.join(options)}, got {value!r}")

    def finite(key: str, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            fail(key, f"must be finite, got {value}")

    m, d, p, t, c, lg, data = (
        cfg.model,
        cfg.diffusion,
        cfg.parallel,
        cfg.train,
        cfg.checkpoint,
        cfg.logging,
        cfg.data,
    )

    # model
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
    ):
        positive(f"model.{name}", getattr(m, name))
    finite("model.norm_epsilon", m.norm_epsilon)
    finite("model.init_std", m.init_std)
    non_negative("model.mask_token_id", m.mask_token_id)
    choice("model.objective", m.objective, ("mdm", "arm"))
    choice("model.transformer_impl", m.transformer_impl, ("local", "transformer_engine"))
    choice("model.attention_backend", m.attention_backend, ("sdpa", "unfused"))
    choice("model.recompute", m.recompute, ("none", "full", "selective"))
    if m.sequence_parallel and m.transformer_impl != "transformer_engine":
        fail(
            "model.sequence_parallel",
            "needs model.transformer_impl=transformer_engine (megatron-core's local norms do "
            "not support sequence parallelism)",
        )
    if m.sequence_parallel and cfg.parallel.tensor == 1:
        fail("model.sequence_parallel", "needs parallel.tensor > 1 (it splits TP activations)")
    if m.hidden_size % m.num_attention_heads:
        fail(
            "model.hidden_size",
            f"{m.hidden_size} is not divisible by model.num_attention_heads "
            f"= {m.num_attention_heads}",
        )
    if m.num_attention_heads % m.kv_groups:
        fail(
            "model.num_query_groups",
            f"model.num_attention_heads = {m.num_attention_heads} is not divisible by "
            f"{m.kv_groups} query groups",
        )

    # diffusion
    finite("diffusion.eps", d.eps)
    if not 0.0 <= d.eps < 1.0:
        fail("diffusion.eps", f"must be in [0, 1), got {d.eps}")
    if not 0.0 <= d.var_len_prob <= 1.0:
        fail("diffusion.var_len_prob", f"must be in [0, 1], got {d.var_len_prob}")
    choice("diffusion.t_sampling", d.t_sampling, ("uniform", "stratified"))
    choice("diffusion.loss", d.loss, ("smdm", "mdlm"))

    # parallel
    positive("parallel.tensor", p.tensor)
    positive("parallel.pipeline", p.pipeline)
    if p.zero_stage not in (0, 1, 2, 3):
        fail("parallel.zero_stage", f"must be one of 0, 1, 2, 3, got {p.zero_stage}")
    for what, n in (
        ("model.num_attention_heads", m.num_attention_heads),
        ("query groups (model.num_query_groups)", m.kv_groups),
        ("model ffn size", m.ffn_size),
    ):
        if n % p.tensor:
            fail("parallel.tensor", f"{p.tensor} does not divide {what} = {n}")
    if m.num_layers % p.pipeline:
        fail(
            "parallel.pipeline",
            f"{p.pipeline} does not divide model.num_layers = {m.num_layers}",
        )
    if p.zero_stage in (2, 3) and p.pipeline > 1:
        fail(
            "parallel.zero_stage",
            "ZeRO-2/3 cannot be combined with pipeline parallelism (a DeepSpeed limitation); "
            "use parallel.zero_stage 0 or 1",
        )
    if p.offload_optimizer and p.zero_stage < 1:
        fail("parallel.offload_optimizer", "requires parallel.zero_stage >= 1")

    # train
    non_negative("train.seed", t.seed)
    positive("train.micro_batch_size", t.micro_batch_size)
    positive("train.global_batch_size", t.global_batch_size)
    positive("train.max_steps", t.max_steps)
    positive("train.lr_decay_steps", t.lr_decay_steps)
    non_negative("train.warmup_steps", t.warmup_steps)
    non_negative("train.eval_interval", t.eval_interval)
    non_negative("train.eval_iters", t.eval_iters)
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "adam_eps"):
        finite(f"train.{name}", getattr(t, name))
    positive("train.lr", t.lr)
    non_negative("train.min_lr", t.min_lr)
    non_negative("train.weight_decay", t.weight_decay)
    non_negative("train.grad_clip", t.grad_clip)
    positive("train.adam_eps", t.adam_eps)
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(t, name) < 1.0:
            fail(f"train.{name}", f"must be in [0, 1), got {getattr(t, name)}")
    if t.global_batch_size % t.micro_batch_size:
        fail(
            "train.global_batch_size",
            f"{t.global_batch_size} is not divisible by train.micro_batch_size "
            f"= {t.micro_batch_size}",
        )
    if t.min_lr > t.lr:
        fail("train.min_lr", f"{t.min_lr} is larger than train.lr = {t.lr}")
    if t.warmup_steps > t.max_steps:
        fail(
            "train.warmup_steps", f"{t.warmup_steps} is larger than train.max_steps = {t.max_steps}"
        )
    if t.warmup_steps > t.decay_steps:
        fail(
            "train.warmup_steps",
            f"{t.warmup_steps} is larger than train.lr_decay_steps = {t.decay_steps}",
        )
    if t.eval_interval > 0 and t.eval_iters < 1:
        fail("train.eval_iters", "must be >= 1 when train.eval_interval > 0")
    choice("train.precision", t.precision, ("fp32", "bf16", "fp8"))
    if t.fp8_recipe is not None:
        choice("train.fp8_recipe", t.fp8_recipe, ("delayed", "current"))
    choice("train.fp8_grad_format", t.fp8_grad_format, ("e5m2", "e4m3"))
    if t.precision == "fp8":
        _check_fp8(cfg, fail)
    if not t.output_dir:
        fail("train.output_dir", "must not be empty")

    # checkpoint
    non_negative("checkpoint.save_interval", c.save_interval)
    if c.keep_last < 1:
        fail("checkpoint.keep_last", f"must be >= 1, got {c.keep_last}")
    if not c.resume:
        fail("checkpoint.resume", "must be auto, none or a checkpoint path")

    # logging
    if lg.interval < 1:
        fail("logging.interval", f"must be >= 1, got {lg.interval}")
    finite("logging.peak_tflops", lg.peak_tflops)
    positive("logging.peak_tflops", lg.peak_tflops)

    # data
    non_negative("data.num_workers", data.num_workers)
    _check_split(data.split, fail)
    if data.blend is not None:
        _check_blend(data.blend, fail)
        if data.text_file is not None:
            fail("data.blend", "data.blend and data.text_file are mutually exclusive")
    choice("data.tokenizer.type", data.tokenizer.type, ("byte", "sentencepiece", "hf"))
    if data.tokenizer.type in ("sentencepiece", "hf") and not data.tokenizer.model:
        fail("data.tokenizer.model", f"required for tokenizer type {data.tokenizer.type}")

    _check_sft(cfg.sft, fail)


def _check_sft(sft: SFTConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    # The option tuples live in data/sft.py and diffusion/sft_loss.py (torch modules): repeated
    # here so that loading a config needs no torch.
    for key, value, options in (
        ("format", sft.format, ("auto", "prompt_response", "chat", "gsm8k", "gsm8k_icot")),
        ("normalize", sft.normalize, ("sequence", "token")),
        ("truncation", sft.truncation, ("response", "prompt_left", "drop")),
        ("pad_to", sft.pad_to, ("max", "longest")),
    ):
        if value not in options:
            fail(f"sft.{key}", f"must be one of {', '.join(options)}, got {value!r}")
    for key, files in (("data", sft.data), ("valid_data", sft.valid_data)):
        if isinstance(files, list) and not files:
            fail(f"sft.{key}", "must name at least one file (or be null)")
        for item in _as_list(files):
            if not isinstance(item, str) or not item:
                fail(f"sft.{key}", f"expected file paths, got {_short(item)}")
    if sft.epochs is not None and not (math.isfinite(sft.epochs) and sft.epochs > 0):
        fail("sft.epochs", f"must be > 0 (or null for train.max_steps), got {sft.epochs}")
    if sft.limit is not None and sft.limit < 1:
        fail("sft.limit", f"must be >= 1 (or null for every line), got {sft.limit}")
    if not (math.isfinite(sft.valid_fraction) and 0.0 <= sft.valid_fraction < 1.0):
        fail("sft.valid_fraction", f"must be in [0, 1), got {sft.valid_fraction}")
    if sft.valid_fraction > 0 and sft.valid_data is not None:
        fail("sft.valid_fraction", "sft.valid_fraction and sft.valid_data are mutually exclusive")
    fmt = sft.chat_template.message_format
    if "{role}" not in fmt or "{content}" not in fmt:
        fail("sft.chat_template.message_format", f"must contain {{role}} and {{content}}: {fmt!r}")


def _check_fp8(cfg: ExperimentConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """FP8 GEMM shapes, per tensor-parallel rank. The local layers (kernels/fp8_linear.py, through
    torch._scaled_mm) need every feature size to be a multiple of 16, pad the token rows
    themselves and scale from the current amax only. Transformer Engine needs input features % 16,
    output features % 8 and token rows (micro-batch x length, any cropped length) % 8."""
    m, t, tp = cfg.model, cfg.train, cfg.parallel.tensor
    local = m.transformer_impl == "local"
    impl = f"train.precision=fp8 with model.transformer_impl={m.transformer_impl}"
    if local and t.fp8_recipe == "delayed":
        fail(
            "train.fp8_recipe",
            "delayed scaling needs model.transformer_impl=transformer_engine; the local FP8 "
            "layers scale from the current amax (train.fp8_recipe=current)",
        )
    head_dim = m.hidden_size // m.num_attention_heads
    qkv_width = (m.num_attention_heads + 2 * m.kv_groups) * head_dim // tp
    for key, what, size, align in (
        ("model.hidden_size", "model.hidden_size", m.hidden_size, 16),
        ("model.hidden_size", "model.hidden_size / parallel.tensor", m.hidden_size // tp, 16),
        ("model.ffn_hidden_size", "the FFN size / parallel.tensor", m.ffn_size // tp, 16),
        (
            "model.num_query_groups",
            "the QKV width (heads + 2 * query groups) * head dim / parallel.tensor",
            qkv_width,
            16 if local else 8,
        ),
    ):
        if size % align:
            why = "torch._scaled_mm" if local else "FP8 tensor-core GEMMs"
            fail(key, f"{impl} needs {what} to be a multiple of {align} ({why}), got {size}")
    if local:
        return
    if cfg.diffusion.var_len_prob > 0 and t.micro_batch_size % 8:
        fail(
            "train.micro_batch_size",
            f"{impl} needs token rows (micro-batch x length) divisible by 8 at every cropped "
            f"length: use a multiple of 8 (got {t.micro_batch_size}) or diffusion.var_len_prob=0",
        )
    if (t.micro_batch_size * m.seq_length) % 8:
        fail(
            "train.micro_batch_size",
            f"{impl} needs train.micro_batch_size x model.seq_length divisible by 8, got "
            f"{t.micro_batch_size} x {m.seq_length}",
        )


def _check_split(split: str, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    parts = [s.strip() for s in split.split(",")]
    if len(parts) != 3 or not all(s.isdigit() for s in parts):
        fail("data.split", f"expected three comma separated non-negative ints, got {split!r}")
    if sum(int(s) for s in parts) == 0:
        fail("data.split", f"weights sum to 0 in {split!r}")


def _check_blend(blend: list, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    if not blend or len(blend) % 2:
        fail("data.blend", f"expected [weight, prefix, weight, prefix, ...], got {_short(blend)}")
    for i in range(0, len(blend), 2):
        weight, prefix = blend[i], blend[i + 1]
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            fail("data.blend", f"item {i} should be a numeric weight, got {_short(weight)}")
        if not (math.isfinite(weight) and weight >= 0):
            fail("data.blend", f"item {i}: weight must be >= 0, got {weight}")
        if not isinstance(prefix, str) or not prefix:
            fail("data.blend", f"item {i + 1} should be a dataset prefix, got {_short(prefix)}")
    if sum(blend[0::2]) <= 0:
        fail("data.blend", "weights sum to 0")
