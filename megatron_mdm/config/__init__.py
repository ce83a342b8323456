"""Experiment configuration: dataclass schema, YAML loading, command-line overrides, validation.

One YAML file describes a run; ``section.key=value`` overrides tweak it from the command line.
Every mistake is reported as a one-line ``ConfigError`` naming the file and the dotted key, so a
typo fails before any process group, model or data loader is built. No torch here: the launcher
and the tools import this package on machines that may not have it.

- ``schema.py``: one dataclass per section, each field documented by the string below it;
  each section validates its own fields; ``ExperimentConfig.validate`` runs those checks,
  then the rules across sections.
- ``rules.py``: the rules across sections (parallel layout, FP8 shapes, world size).
- ``choices.py``: the settings with fixed values, as ``Literal`` types (the field annotations)
  and as tuples (``OBJECTIVES``, ``SFT_FORMATS``, ...) for the modules that consume them.
- ``coerce.py``: typed construction from YAML and overrides, checked against the annotations
  (``Literal`` choices included).
- ``loading.py``: ``load_config``, ``from_dict``, ``to_dict``, ``dump_yaml``.
- ``checks.py``: ``ConfigError`` and the small value checks the sections share.
"""

from megatron_mdm.config.checks import ConfigError
from megatron_mdm.config.choices import (
    ATTENTION_BACKENDS,
    BLOCK_T_SAMPLINGS,
    COMPARED_OBJECTIVES,
    DATA_VALIDATIONS,
    DIFFUSION_LOSSES,
    FP8_GRAD_FORMATS,
    FP8_RECIPES,
    LR_SCHEDULES,
    NONFINITE_POLICIES,
    OBJECTIVES,
    PAD_TO,
    PRECISIONS,
    RECOMPUTE_MODES,
    SFT_FORMATS,
    SFT_NORMALIZE,
    T_SAMPLINGS,
    TOKENIZER_TYPES,
    TRANSFORMER_IMPLS,
    TRUNCATION_POLICIES,
    WANDB_MODES,
    ZERO_STAGES,
    AttentionBackend,
    BlockTSampling,
    DataValidation,
    DiffusionLoss,
    FP8GradFormat,
    FP8Recipe,
    LRSchedule,
    NonFinitePolicy,
    Objective,
    PadTo,
    Precision,
    Recompute,
    SFTFormat,
    SFTNormalize,
    TokenizerType,
    TransformerImpl,
    TruncationPolicy,
    TSampling,
    WandbMode,
    ZeroStage,
)
from megatron_mdm.config.loading import dump_yaml, from_dict, load_config, to_dict
from megatron_mdm.config.rules import check_world_size
from megatron_mdm.config.schema import (
    ChatTemplateConfig,
    CheckpointConfig,
    DataConfig,
    DiffusionConfig,
    ExperimentConfig,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    SFTConfig,
    TokenizerConfig,
    TrainConfig,
    validate,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "BLOCK_T_SAMPLINGS",
    "COMPARED_OBJECTIVES",
    "DATA_VALIDATIONS",
    "DIFFUSION_LOSSES",
    "FP8_GRAD_FORMATS",
    "FP8_RECIPES",
    "LR_SCHEDULES",
    "NONFINITE_POLICIES",
    "OBJECTIVES",
    "PAD_TO",
    "PRECISIONS",
    "RECOMPUTE_MODES",
    "SFT_FORMATS",
    "SFT_NORMALIZE",
    "T_SAMPLINGS",
    "TOKENIZER_TYPES",
    "TRANSFORMER_IMPLS",
    "TRUNCATION_POLICIES",
    "WANDB_MODES",
    "ZERO_STAGES",
    "AttentionBackend",
    "BlockTSampling",
    "DataValidation",
    "ChatTemplateConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "DiffusionLoss",
    "ExperimentConfig",
    "FP8GradFormat",
    "FP8Recipe",
    "LRSchedule",
    "LoggingConfig",
    "ModelConfig",
    "NonFinitePolicy",
    "Objective",
    "PadTo",
    "ParallelConfig",
    "Precision",
    "Recompute",
    "SFTConfig",
    "SFTFormat",
    "SFTNormalize",
    "TSampling",
    "TokenizerConfig",
    "TokenizerType",
    "TrainConfig",
    "TransformerImpl",
    "TruncationPolicy",
    "WandbMode",
    "ZeroStage",
    "check_world_size",
    "dump_yaml",
    "from_dict",
    "load_config",
    "to_dict",
    "validate",
]
