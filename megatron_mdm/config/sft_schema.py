"""The ``sft`` section of the experiment schema (`mdm sft`, docs/design.md §4): its data, format,
normalisation, truncation and chat template. Kept beside ``schema.py`` (which imports it) so that
module stays one screenful per section."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_mdm.config.checks import Fail, short, within
from megatron_mdm.config.choices import PadTo, SFTFormat, SFTNormalize, TruncationPolicy

__all__ = ["ChatTemplateConfig", "SFTConfig"]


@dataclass
class ChatTemplateConfig:
    """``sft.chat_template``: how chat messages before the answer become the prompt
    (data/sft.py ChatTemplate)."""

    message_format: str = "<|{role}|>\n{content}\n"
    """Format of one message; must contain {role} and {content}."""
    generation_prefix: str = "<|assistant|>\n"
    """Appended after the last prompt message: the cue that the answer starts."""
    use_tokenizer_template: bool = False
    """Use the HF tokenizer's own apply_chat_template instead of the two formats above."""

    def validate(self, fail: Fail) -> None:
        """The message format has both placeholders."""
        fmt = self.message_format
        if "{role}" not in fmt or "{content}" not in fmt:
            fail(
                "sft.chat_template.message_format",
                f"must contain {{role}} and {{content}}: {fmt!r}",
            )


@dataclass
class SFTConfig:
    """``sft``: supervised fine-tuning by ``mdm sft`` (docs/design.md §4); ``mdm train`` ignores
    it."""

    data: list | str | None = None
    """Training file, or a list of files (required by ``mdm sft``)."""
    format: SFTFormat = "auto"
    """Record format; auto: by file and record (.txt: gsm8k_icot; a jsonl record with
    "messages": chat, with "question": gsm8k, otherwise prompt_response)."""
    gsm8k_split_cot: bool = False
    """SMDM: two samples per GSM8K problem, question -> CoT and question + CoT -> "#### N"."""
    normalize: SFTNormalize = "sequence"
    """Loss normalisation: sequence (LLaDA: every example weighs the same) or token (SMDM:
    every response token weighs the same)."""
    truncation: TruncationPolicy = "response"
    """An example longer than model.seq_length: cut the response end, cut the prompt from the
    left (prompt_left), or drop the example; every case is counted and reported."""
    pad_to: PadTo = "max"
    """Pad each micro-batch to model.seq_length (max: fixed shapes) or to its longest example
    (longest: less compute on short data)."""
    epochs: float | None = None
    """Set: the run is ceil(epochs * training examples / train.global_batch_size) steps,
    replacing train.max_steps (known once the data is read); None: train.max_steps."""
    limit: int | None = None
    """Read only the first N lines of sft.data (quick runs); None: all."""
    shuffle: bool = True
    """A fresh example order each epoch, keyed by (seed, epoch)."""
    valid_data: list | str | None = None
    """Validation file(s) for the response loss every train.eval_interval steps
    (train.eval_iters batches). Excludes valid_fraction."""
    valid_fraction: float = 0.0
    """Instead of valid_data: this fraction of the training examples is held out (keyed by
    seed)."""
    chat_template: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)
    """How chat records are rendered into a prompt."""

    @property
    def data_files(self) -> list[str]:
        return _as_list(self.data)

    @property
    def valid_files(self) -> list[str]:
        return _as_list(self.valid_data)

    def validate(self, fail: Fail) -> None:
        """File lists, run length, held-out fraction, and the chat template."""
        for key, files in (("sft.data", self.data), ("sft.valid_data", self.valid_data)):
            if isinstance(files, list) and not files:
                fail(key, "must name at least one file (or be null)")
            for item in _as_list(files):
                if not isinstance(item, str) or not item:
                    fail(key, f"expected file paths, got {short(item)}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            fail("sft.epochs", f"must be > 0 (or null for train.max_steps), got {self.epochs}")
        if self.limit is not None and self.limit < 1:
            fail("sft.limit", f"must be >= 1 (or null for every line), got {self.limit}")
        within(fail, "sft.valid_fraction", self.valid_fraction)
        if self.valid_fraction > 0 and self.valid_data is not None:
            fail(
                "sft.valid_fraction", "sft.valid_fraction and sft.valid_data are mutually exclusive"
            )
        self.chat_template.validate(fail)


def _as_list(value: list | str | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------------------------
# The experiment: sections plus the rules that tie them together
# --------------------------------------------------------------------------------------------
