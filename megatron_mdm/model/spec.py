"""Layer specs: which megatron-core modules make up a transformer layer.

Both implementations (local torch, Transformer Engine) use megatron-core's stock GPT specs; we only
choose the attention mask type: `no_mask` for the bidirectional MDM, `causal` for the ARM baseline,
`arbitrary` for block diffusion, whose block mask the model passes at every forward (built once
per shape; core attention: `SDPAttention` locally, `TEArbitraryMaskAttention` with TE), and for
an MDM under attention annealing (docs/design.md §13.5: a look-ahead mask while it lasts, no mask,
i.e. bidirectional, after).
"""

from __future__ import annotations

import copy
import importlib.util

from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.kernels.fp8_parallel_linear import (
    FP8ColumnParallelLinear,
    FP8RowParallelLinear,
)
from megatron_mdm.model.sdpa_attention import SDPAttention
from megatron_mdm.model.te_attention import te_arbitrary_mask_attention

TE_MISSING = (
    "transformer_engine needs the transformer-engine package, which is not installed; install it "
    "(pip install transformer-engine[pytorch]) or use model.transformer_impl=local"
)


class TransformerEngineMissing(ConfigError):
    pass


def check_transformer_impl(cfg: ExperimentConfig) -> None:
    """Fail at start-up, before any process group exists, when the TE spec cannot be built."""
    wants_te = cfg.model.transformer_impl == "transformer_engine"
    if wants_te and importlib.util.find_spec("transformer_engine") is None:
        raise TransformerEngineMissing(TE_MISSING, source=cfg.source, key="model.transformer_impl")


def attention_mask_type(objective: str, arbitrary_mask: bool = False):
    from megatron.core.transformer.enums import AttnMaskType

    if objective == "block" or arbitrary_mask:
        return AttnMaskType.arbitrary
    return AttnMaskType.causal if objective == "arm" else AttnMaskType.no_mask


def use_fp8_linears(spec, grad_format: str) -> None:
    """Local spec: the four GEMM layers of a block become our FP8 column/row parallel linears
    (kernels/fp8_parallel_linear.py); everything else keeps the parameter dtype."""
    from megatron.core.transformer.spec_utils import ModuleSpec

    params = {"grad_format": grad_format}
    attention = spec.submodules.self_attention.submodules
    mlp = spec.submodules.mlp.submodules
    attention.linear_qkv = ModuleSpec(module=FP8ColumnParallelLinear, params=params)
    attention.linear_proj = ModuleSpec(module=FP8RowParallelLinear, params=params)
    mlp.linear_fc1 = ModuleSpec(module=FP8ColumnParallelLinear, params=params)
    mlp.linear_fc2 = ModuleSpec(module=FP8RowParallelLinear, params=params)


def layer_spec(
    transformer_impl: str,
    objective: str,
    attention_backend: str = "sdpa",
    fp8_grad_format: str | None = None,
    arbitrary_mask: bool = False,
):
    """`fp8_grad_format` (local spec only): use the FP8 linear layers with that gradient format;
    Transformer Engine's FP8 is switched on through TransformerConfig instead (builder.py).
    `arbitrary_mask`: the model passes its own masks (attention annealing)."""
    from megatron.core.models.gpt import gpt_layer_specs

    if transformer_impl == "transformer_engine":
        if not gpt_layer_specs.HAVE_TE:
            raise TransformerEngineMissing(TE_MISSING, key="model.transformer_impl")
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec = copy.deepcopy(spec)
    attention = spec.submodules.self_attention.submodules
    if transformer_impl == "local" and attention_backend == "sdpa":
        attention.core_attention = SDPAttention
    arbitrary = objective == "block" or arbitrary_mask
    if transformer_impl == "transformer_engine" and arbitrary:
        attention.core_attention = te_arbitrary_mask_attention()
    if transformer_impl == "local" and fp8_grad_format is not None:
        use_fp8_linears(spec, fp8_grad_format)
    spec.submodules.self_attention.params["attn_mask_type"] = attention_mask_type(
        objective, arbitrary_mask
    )
    return spec
