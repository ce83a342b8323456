"""Hugging Face config for megatron-mdm exports.

This file is copied verbatim into every exported folder and loaded with `trust_remote_code=True`,
so it imports only `transformers`. It uses a plain `__init__` (the remote-code style) rather than
transformers 5 dataclass fields so that the same file loads under transformers 4.x as well.
"""

from transformers import PretrainedConfig

AUTO_MAP = {
    "AutoConfig": "configuration_mdm.MDMConfig",
    "AutoModel": "modeling_mdm.MDMModel",
    "AutoModelForMaskedLM": "modeling_mdm.MDMForMaskedLM",
}


class MDMConfig(PretrainedConfig):
    """Llama-style transformer trained as a masked diffusion LM (`objective="mdm"`, bidirectional),
    as an autoregressive baseline (`objective="arm"`, causal) or as a block diffusion LM
    (`objective="block"`: block k attends to blocks <= k, `block_size` tokens per block) by
    megatron-mdm.

    `vocab_size` is the number of embedding rows: the tokenizer vocabulary plus the `[MASK]` id,
    without megatron's tensor-parallel padding (the exporter drops those rows). `invalid_output_ids`
    are the ids the model must never predict; their logits are -inf so that sampling and likelihood
    code can softmax the logits as they are. `shift` (Dream, objective "mdm"): the output at
    position i predicts token i + 1, so the logits of position i are the output at i - 1 and
    those of position 0 the output at 0. `auto_map` defaults to this folder's two modeling
    files so that `config.json` written by `save_pretrained` is loadable with the Auto classes.
    """

    model_type = "megatron_mdm"

    def __init__(
        self,
        vocab_size=32001,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=None,
        head_dim=None,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        objective="mdm",
        block_size=None,
        shift=False,
        mask_token_id=None,
        invalid_output_ids=None,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        auto_map=None,
        **kwargs,
    ):
        if objective not in ("mdm", "arm", "block"):
            raise ValueError(f"objective must be 'mdm', 'arm' or 'block', got {objective!r}")
        if objective == "block" and not (isinstance(block_size, int) and block_size >= 1):
            raise ValueError(f"objective 'block' needs block_size >= 1, got {block_size!r}")
        if shift and objective != "mdm":
            raise ValueError(f"shift is for objective 'mdm', not {objective!r}")
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if num_attention_heads % num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({num_key_value_heads})"
            )
        if head_dim is None:
            if hidden_size % num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size ({hidden_size}) is not divisible by num_attention_heads "
                    f"({num_attention_heads}); set head_dim explicitly"
                )
            head_dim = hidden_size // num_attention_heads
        if mask_token_id is None:
            # megatron-mdm appends [MASK] after the tokenizer vocabulary.
            mask_token_id = vocab_size - 1
        if invalid_output_ids is None:
            invalid_output_ids = [mask_token_id]
        invalid_output_ids = sorted({int(i) for i in invalid_output_ids})
        if (
            invalid_output_ids
            and not 0 <= invalid_output_ids[0] <= invalid_output_ids[-1] < vocab_size
        ):
            raise ValueError(f"invalid_output_ids {invalid_output_ids} outside [0, {vocab_size})")

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = rms_norm_eps
        self.objective = objective
        self.block_size = block_size if objective == "block" else None
        self.shift = bool(shift)
        self.mask_token_id = mask_token_id
        self.invalid_output_ids = invalid_output_ids
        self.initializer_range = initializer_range
        self.auto_map = dict(AUTO_MAP) if auto_map is None else auto_map
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


__all__ = ["MDMConfig"]
