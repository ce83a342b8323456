"""The masked diffusion LM: megatron-core's GPTModel whose output never predicts `[MASK]`/padding.

Subclassing (rather than wrapping) keeps GPTModel's parameter names, `config`, `model_type` and
`set_input_tensor`, which the pipeline schedules, DeepSpeed and the checkpoint converters rely on.
Whether attention is bidirectional (MDM) or causal (ARM) is decided by the layer spec.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from megatron_mdm.model.vocab import VocabLayout


class MaskedDiffusionLM(GPTModel):
    def __init__(self, *args, vocab: VocabLayout, objective: str, **kwargs):
        super().__init__(*args, vocab_size=vocab.padded_size, **kwargs)
        self.vocab = vocab
        self.objective = objective
        if self.post_process:
            self.register_buffer("logit_bias", self._local_logit_bias(vocab), persistent=False)

    @staticmethod
    def _local_logit_bias(vocab: VocabLayout) -> torch.Tensor:
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        per_rank = vocab.padded_size // tp_size
        first = tp_rank * per_rank
        bias = torch.zeros(per_rank, dtype=torch.float32)
        for vid in vocab.invalid_output_ids():
            if first <= vid < first + per_rank:
                bias[vid - first] = float("-inf")
        return bias

    def forward(self, input_ids, position_ids=None, attention_mask=None, **kwargs):
        """Logits [batch, seq, local vocab] on the last stage, hidden states elsewhere."""
        if position_ids is None:
            seq = input_ids.shape[1]
            position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0)
            position_ids = position_ids.expand(input_ids.shape[0], -1)
        out = super().forward(input_ids, position_ids, attention_mask, **kwargs)
        if not self.post_process:
            return out
        return out + self.logit_bias.to(out.dtype)
