"""The masked diffusion LM: megatron-core's GPTModel whose output never predicts `[MASK]`/padding.

Subclassing (rather than wrapping) keeps GPTModel's parameter names, `config`, `model_type` and
`set_input_tensor`, which the pipeline schedules, DeepSpeed and the checkpoint converters rely on.
Whether attention is bidirectional (MDM) or causal (ARM) is decided by the layer spec.

Block diffusion (`objective="block"`, docs/design.md §11) passes a block mask at every forward:
- training: `model(x_t, clean_input_ids=x_0, block_size=B)` runs the 2L sequence `[x_t; x_0]`
  under the block-diffusion mask, with RoPE positions `0..L-1` for both copies, and returns the
  logits of the x_t half only (the x_0 half skips the output layer);
- inference: `model(x)` runs one block-causal copy (block k sees blocks <= k), with the model's
  own block size.
The 2L sequence is what flows between pipeline stages; every stage rebuilds the mask from the
micro-batch (the masks are cached per shape, `model.attention_masks`).

Adaptation from a causal LM (docs/design.md §13.4-13.5), MDM objective:
- `shift`: the output at position i predicts token i + 1 (a causal LM's head, reused): the logits
  of position i are the output at i - 1, those of position 0 the output at 0 (`shift_logits`);
- `model(x, lookahead=d)` (attention annealing, training only): query i attends to keys
  j <= i + d; without it attention is bidirectional (what sampling and evaluation run).
Training with `labels` [b, L] (and a `loss_mask` [b, L]) returns the per-token cross-entropy [b, L]
instead of logits, computed on the loss positions only (model/loss_rows.py, docs/design.md §14).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from megatron_mdm.model.attention_masks import (
    block_causal_mask,
    block_diffusion_mask,
    lookahead_mask,
)
from megatron_mdm.model.loss_rows import RowLossOutputLayer, row_losses
from megatron_mdm.model.vocab import VocabLayout


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, L, V] outputs -> logits of each position: position i takes output i - 1 (i >= 1),
    position 0 output 0; the last output (a prediction past the sequence) is dropped."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class MaskedDiffusionLM(GPTModel):
    def __init__(
        self,
        *args,
        vocab: VocabLayout,
        objective: str,
        block_size: int | None = None,
        shift: bool = False,
        ce_chunk_tokens: int = 0,
        **kwargs,
    ):
        super().__init__(*args, vocab_size=vocab.padded_size, **kwargs)
        self.vocab = vocab
        self.objective = objective
        self.block_size = block_size
        self.shift = shift
        self.ce_chunk_tokens = ce_chunk_tokens  # rows per chunk of the CE with labels; 0: whole
        self._noisy_length = None  # set while a [x_t; x_0] forward runs: L of the x_t half
        self._output_positions = None  # set while a forward runs for selected logits only
        if self.post_process:
            self.register_buffer("logit_bias", self._local_logit_bias(vocab), persistent=False)
            # same parameters and state; its forward can also return the CE of selected rows
            self.output_layer.__class__ = RowLossOutputLayer

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

    def forward(
        self,
        input_ids,
        position_ids=None,
        attention_mask=None,
        clean_input_ids=None,
        block_size: int | None = None,
        lookahead: int | None = None,
        output_positions=None,
        **kwargs,
    ):
        """Logits [batch, seq, local vocab] on the last stage, hidden states elsewhere.

        `output_positions` [batch, seq] (bool; inference, no sequence parallelism): the output
        layer runs on those positions only, and the logits are [N, local vocab], row-major.

        `clean_input_ids` [batch, L] (block objective, training): x_0 beside `input_ids` = x_t;
        the logits then cover x_t only. `block_size` overrides the model's (a schedule).
        `lookahead` (MDM, attention annealing): keys past the query each query may see.
        `labels` [batch, seq] (kwargs, with an optional bool `loss_mask`): the last stage returns
        the per-token CE [batch, seq] in fp32, nonzero only where `loss_mask` is set."""
        noisy_length = None
        if self.objective == "block":
            size = block_size or self.block_size
            if clean_input_ids is not None:
                noisy_length = input_ids.shape[1]
                input_ids = torch.cat([input_ids, clean_input_ids], dim=1)
                attention_mask = block_diffusion_mask(noisy_length, size, input_ids.device)
            else:
                attention_mask = block_causal_mask(input_ids.shape[1], size, input_ids.device)
        elif clean_input_ids is not None:
            raise ValueError(f"clean_input_ids is for the block objective, not {self.objective}")
        if lookahead is not None:
            if self.objective != "mdm":
                raise ValueError(f"lookahead is for the mdm objective, not {self.objective}")
            attention_mask = lookahead_mask(input_ids.shape[1], lookahead, input_ids.device)
        if position_ids is None:
            seq = input_ids.shape[1]
            position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0)
            position_ids = position_ids.expand(input_ids.shape[0], -1)
        if output_positions is not None and (
            noisy_length is not None or self.config.sequence_parallel
        ):
            raise ValueError("output_positions needs one copy and no sequence parallelism")
        self._noisy_length = noisy_length
        self._output_positions = output_positions
        try:
            out = super().forward(input_ids, position_ids, attention_mask, **kwargs)
        finally:
            self._noisy_length = self._output_positions = None
        if not self.post_process or kwargs.get("labels") is not None:
            return out
        if noisy_length is not None:
            out = out[:, :noisy_length]  # a no-op unless sequence parallelism kept x_0's logits
        if output_positions is not None:
            out = out[0]  # [1, N, V] -> [N, V] (shifted before the rows were selected)
        elif self.shift:
            out = shift_logits(out)
        return out + self.logit_bias.to(out.dtype)

    def _preprocess(self, *args, **kwargs):
        """GPTModel computes RoPE for positions 0..2L-1; the x_0 copy sits at x_t's positions."""
        out = super()._preprocess(*args, **kwargs)
        length, rope = self._noisy_length, out[1]
        if length is None or rope is None:
            return out
        return (out[0], torch.cat([rope[:length], rope[:length]]), *out[2:])

    def _postprocess(self, hidden_states, **kwargs):
        """Only the x_t half goes through the output layer (hidden states are [s, b, h]; under
        sequence parallelism they are split along s, so the logits are cut after instead)."""
        length = self._noisy_length
        if self.post_process and kwargs.get("labels") is not None:
            return row_losses(self, hidden_states, kwargs["labels"], kwargs["loss_mask"], length)
        if length is not None and self.post_process and not self.config.sequence_parallel:
            hidden_states = hidden_states[:length]
        rows = self._output_positions
        if rows is not None and self.post_process:  # [s, b, h] -> the selected rows [N, 1, h]
            if self.shift:  # position i reads output i - 1 (the output layer is row-wise)
                hidden_states = torch.cat([hidden_states[:1], hidden_states[:-1]])
            hidden_states = hidden_states.transpose(0, 1)[rows.to(hidden_states.device)]
            hidden_states = hidden_states.unsqueeze(1)
        return super()._postprocess(hidden_states=hidden_states, **kwargs)
