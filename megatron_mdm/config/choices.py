"""The values of every config setting with a fixed set of them: a ``Literal`` type per setting
(the annotation of its field in ``schema.py``, which the YAML reader checks) and the same values
as a tuple, for the modules that consume the setting (argparse ``choices``, their own checks):
each choice list is written once, here.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ATTENTION_BACKENDS",
    "BLOCK_T_SAMPLINGS",
    "COMPARED_OBJECTIVES",
    "DATA_VALIDATIONS",
    "DIFFUSION_LOSSES",
    "FP8_GRAD_FORMATS",
    "FP8_RECIPES",
    "LOGITS_MODES",
    "LR_SCHEDULES",
    "NONFINITE_POLICIES",
    "OBJECTIVES",
    "PAD_TO",
    "PRECISIONS",
    "RECOMPUTE_MODES",
    "SFT_FORMATS",
    "SYNTHETIC_CORPORA",
    "SFT_NORMALIZE",
    "TOKENIZER_TYPES",
    "TRANSFORMER_IMPLS",
    "TRUNCATION_POLICIES",
    "WANDB_MODES",
    "T_SAMPLINGS",
    "ZERO_STAGES",
    "AttentionBackend",
    "BlockTSampling",
    "DataValidation",
    "SyntheticCorpus",
    "DiffusionLoss",
    "FP8GradFormat",
    "FP8Recipe",
    "LRSchedule",
    "LogitsMode",
    "NonFinitePolicy",
    "Objective",
    "PadTo",
    "Precision",
    "Recompute",
    "SFTFormat",
    "SFTNormalize",
    "TSampling",
    "TokenizerType",
    "TransformerImpl",
    "TruncationPolicy",
    "WandbMode",
    "ZeroStage",
]

Objective = Literal["mdm", "arm", "block"]
TransformerImpl = Literal["local", "transformer_engine"]
AttentionBackend = Literal["sdpa", "unfused"]
Recompute = Literal["none", "full", "selective"]
TSampling = Literal["uniform", "stratified"]
BlockTSampling = Literal["sequence", "block"]
DiffusionLoss = Literal["smdm", "mdlm"]
LogitsMode = Literal["all", "masked"]
ZeroStage = Literal[0, 1, 2, 3]
Precision = Literal["fp32", "bf16", "fp8"]
FP8Recipe = Literal["delayed", "current"]
FP8GradFormat = Literal["e5m2", "e4m3"]
TokenizerType = Literal["byte", "sentencepiece", "hf"]
DataValidation = Literal["sample", "full"]
SyntheticCorpus = Literal["standard", "small"]
SFTFormat = Literal["auto", "prompt_response", "chat", "gsm8k", "gsm8k_icot"]
SFTNormalize = Literal["sequence", "token"]
TruncationPolicy = Literal["response", "prompt_left", "drop"]
PadTo = Literal["max", "longest"]
LRSchedule = Literal["cosine", "wsd", "constant"]
NonFinitePolicy = Literal["skip", "stop"]
WandbMode = Literal["online", "offline"]

OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
TRANSFORMER_IMPLS: tuple[TransformerImpl, ...] = get_args(TransformerImpl)
ATTENTION_BACKENDS: tuple[AttentionBackend, ...] = get_args(AttentionBackend)
RECOMPUTE_MODES: tuple[Recompute, ...] = get_args(Recompute)
T_SAMPLINGS: tuple[TSampling, ...] = get_args(TSampling)
BLOCK_T_SAMPLINGS: tuple[BlockTSampling, ...] = get_args(BlockTSampling)
# The two objectives that IsoFLOP sweeps, the SMDM family configs and RESULTS.csv compare
# (block diffusion interpolates between them and has its own recipes, configs/block/).
COMPARED_OBJECTIVES: tuple[Objective, ...] = ("mdm", "arm")
DIFFUSION_LOSSES: tuple[DiffusionLoss, ...] = get_args(DiffusionLoss)
LOGITS_MODES: tuple[LogitsMode, ...] = get_args(LogitsMode)
ZERO_STAGES: tuple[ZeroStage, ...] = get_args(ZeroStage)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
FP8_RECIPES: tuple[FP8Recipe, ...] = get_args(FP8Recipe)
FP8_GRAD_FORMATS: tuple[FP8GradFormat, ...] = get_args(FP8GradFormat)
TOKENIZER_TYPES: tuple[TokenizerType, ...] = get_args(TokenizerType)
DATA_VALIDATIONS: tuple[DataValidation, ...] = get_args(DataValidation)
SYNTHETIC_CORPORA: tuple[SyntheticCorpus, ...] = get_args(SyntheticCorpus)
SFT_FORMATS: tuple[SFTFormat, ...] = get_args(SFTFormat)
SFT_NORMALIZE: tuple[SFTNormalize, ...] = get_args(SFTNormalize)
TRUNCATION_POLICIES: tuple[TruncationPolicy, ...] = get_args(TruncationPolicy)
PAD_TO: tuple[PadTo, ...] = get_args(PadTo)
LR_SCHEDULES: tuple[LRSchedule, ...] = get_args(LRSchedule)
NONFINITE_POLICIES: tuple[NonFinitePolicy, ...] = get_args(NonFinitePolicy)
WANDB_MODES: tuple[WandbMode, ...] = get_args(WandbMode)
