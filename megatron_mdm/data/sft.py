"""Supervised fine-tuning data (docs/design.md §4): load prompt/response pairs, fit them to the
sequence length, and assemble masked micro-batches.

Input formats (one example per line, streamed):
- ``.jsonl`` with ``{"prompt": str, "response": str}``: used verbatim, so a dataset that was
  already formatted keeps its exact text;
- ``.jsonl`` with ``{"messages": [{"role", "content"}, ...]}``: the last message (assistant) is
  the response, the earlier ones are rendered into the prompt by a :class:`ChatTemplate`;
- ``.jsonl`` with ``{"question": str, "answer": str}`` (GSM8K as released: the answer is the
  reasoning, one step per line with ``<<calculator>>`` notes, then ``#### N``): normalised to the
  line format below (notes removed, lines joined by spaces);
- ``.txt`` with ``question||reasoning #### answer`` (the GSM8K format SMDM's math SFT reads).

GSM8K problems can be expanded into SMDM's two samples per problem (``gsm8k_split_cot``):
question -> chain of thought, and question + chain of thought -> ``#### answer``.

A sequence is ``prompt + response + EOS``, then more EOS up to the padded length. The EOS pads
belong to the response: they are masked and learned like any response token, which is how a
diffusion model (no causal stop) learns where its answer ends. The prompt is never masked.

Truncation happens once, in :func:`fit_examples`, before examples are indexed: dropping an
example inside a micro-batch would shift every later sample and break the keyed masks. Every
truncated or dropped example is counted in a :class:`TruncationReport`, never silently.

Masks follow the pretraining convention (``diffusion/masking.py``): each sample's draws come
from generators seeded by ``(seed, key, position in the global batch)``, so a sample gets the
same mask on any number of ranks, with any micro-batch split, and after a resume.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megatron_mdm.config import PAD_TO, SFT_FORMATS, TRUNCATION_POLICIES
from megatron_mdm.data.tokenizers import Tokenizer
from megatron_mdm.diffusion.masking import response_mask
from megatron_mdm.utils import MDMError

__all__ = [
    "PAD_TO",
    "SFT_FORMATS",
    "TRUNCATION_POLICIES",
    "ChatTemplate",
    "SFTDataError",
    "SFTExample",
    "SFTMicroBatch",
    "TruncationReport",
    "build_sft_arm_micro_batch",
    "build_sft_micro_batch",
    "fit_examples",
    "gsm8k_answer_prompt_ids",
    "gsm8k_line_from_record",
    "gsm8k_question_prompt",
    "iter_sft_examples",
    "iter_sft_groups",
    "load_sft_examples",
]

# TRUNCATION_POLICIES, PAD_TO and SFT_FORMATS are the choices of sft.truncation, sft.pad_to and
# sft.format (megatron_mdm.config). Format auto: by file and record (.txt -> gsm8k_icot; a jsonl
# record with "messages" -> chat, with "question" -> gsm8k, otherwise prompt_response). A named
# format makes every line match it.
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_ROLES = ("system", "user", "assistant")


class SFTDataError(MDMError):
    """Bad input, as one line: ``FILE:LINE: what is wrong`` (LINE is 1-based)."""

    def __init__(self, path: str | os.PathLike[str], line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem

    def __reduce__(self):  # picklable, so it survives a DataLoader worker
        return type(self), (self.path, self.line, self.problem)


@dataclass(frozen=True)
class SFTExample:
    """Token ids without any EOS: the EOS and the padding are added when a batch is built, so the
    same examples serve any sequence length and padding mode."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass(frozen=True)
class ChatTemplate:
    """How chat messages before the answer become prompt text.

    The default is deliberately plain (``<|role|>\\ncontent\\n`` per message, then
    ``<|assistant|>\\n``) so it works with any tokenizer, the byte tokenizer included, and a model
    fine-tuned from scratch needs no special tokens. ``message_format`` must contain ``{role}``
    and ``{content}``. ``use_tokenizer_template=True`` uses the Hugging Face tokenizer's own
    ``apply_chat_template`` instead, for checkpoints converted from models trained with it.
    """

    message_format: str = "<|{role}|>\n{content}\n"
    generation_prefix: str = "<|assistant|>\n"
    use_tokenizer_template: bool = False

    def render_prompt(self, messages: Sequence[dict[str, str]], tokenizer: Any = None) -> str:
        """Prompt text for ``messages`` (everything before the answer), ending where the
        assistant's answer starts."""
        if self.use_tokenizer_template:
            hf = _hf_chat_tokenizer(tokenizer)
            return hf.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        parts = [self.message_format.format(role=m["role"], content=m["content"]) for m in messages]
        return "".join(parts) + self.generation_prefix


def _hf_chat_tokenizer(tokenizer: Any) -> Any:
    """The transformers tokenizer behind ``tokenizer`` that carries a chat template.

    :class:`~megatron_mdm.data.tokenizers.HFTokenizer` may expose the object it wraps as ``hf``;
    a raw transformers tokenizer is accepted as well. A bare ``tokenizer.json`` has no template.
    """
    for candidate in (getattr(tokenizer, "hf", None), tokenizer):
        if candidate is not None and hasattr(candidate, "apply_chat_template"):
            if getattr(candidate, "chat_template", None) is None:
                raise ValueError(f"{tokenizer!r} has no chat template (use the default template)")
            return candidate
    raise ValueError(
        f"use_tokenizer_template=True needs a Hugging Face tokenizer with apply_chat_template; "
        f"{tokenizer!r} has none (use the default template)"
    )


# ---------------------------------------------------------------------------------------------
# Loading


def _check_messages(messages: Any) -> str | None:
    """The problem with a ``messages`` list, or None. Order: optional system first, then user
    and assistant alternating, ending with the assistant's answer (the response)."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"messages[{i}] must be an object with 'role' and 'content'"
        if m["role"] not in _ROLES:
            return f"messages[{i}] has unknown role {m['role']!r} (expected one of {_ROLES})"
        if not isinstance(m["content"], str):
            return f"messages[{i}].content must be a string"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
    if not body or body[-1] != "assistant" or body != expected:
        return (
            f"wrong role order {roles} (expected an optional system message, then user and "
            "assistant alternating, ending with assistant)"
        )
    return None


def _parse_json_record(text: str, tokenizer: Tokenizer, template: ChatTemplate, fmt: str):
    """(kind, prompt, response) of one jsonl line, or the problem as a string."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    if fmt == "auto":
        fmt = "chat" if "messages" in record else "gsm8k" if "question" in record else ""
        fmt = fmt or "prompt_response"
    if fmt == "chat":
        if "messages" not in record:
            have = ", ".join(repr(k) for k in record) or "none"
            return f"missing key 'messages' (format chat; has {have})"
        problem = _check_messages(record["messages"])
        if problem:
            return problem
        *context, answer = record["messages"]
        return "chat", template.render_prompt(context, tokenizer), answer["content"]
    if fmt == "gsm8k":
        return _parse_gsm8k_line(gsm8k_line_from_record(record))
    missing = [k for k in ("prompt", "response") if k not in record]
    if missing:
        have = ", ".join(repr(k) for k in record) or "none"
        want = " and ".join(repr(k) for k in missing)
        return (
            f"missing key {want} (expected 'prompt'+'response', 'messages' or "
            f"'question'+'answer'; has {have})"
        )
    prompt, response = record["prompt"], record["response"]
    if not isinstance(prompt, str) or not isinstance(response, str):
        return "'prompt' and 'response' must be strings"
    return "prompt_response", prompt, response


def gsm8k_line_from_record(record: dict) -> str:
    """A GSM8K jsonl record as its ``question||reasoning #### answer`` line (ValueError: why not).

    The released answers put each step on its own line with ``<<48/2=24>>`` calculator notes;
    the notes are removed (a diffusion model has no calculator to call) and the lines joined by
    spaces, which gives the same one-line text as the ``.txt`` format, so both train alike.
    """
    missing = [k for k in ("question", "answer") if k not in record]
    if missing:
        have = ", ".join(repr(k) for k in record) or "none"
        raise ValueError(f"missing key {' and '.join(map(repr, missing))} (gsm8k; has {have})")
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError("'question' and 'answer' must be strings")
    steps = [line.strip() for line in _CALCULATOR_NOTE.sub("", answer).splitlines()]
    return gsm8k_question_prompt(question) + "||" + " ".join(step for step in steps if step)


def gsm8k_question_prompt(question: str) -> str:
    """The prompt text a GSM8K problem is fine-tuned on: the bare question, stripped, no template.

    ``mdm eval gsm8k --two-stage`` builds its first prompt with this function, and its second
    with :func:`gsm8k_answer_prompt_ids`, so the evaluation prompts cannot drift from training.
    """
    return question.strip()


def gsm8k_answer_prompt_ids(question_ids: Sequence[int], cot_ids: Sequence[int]) -> list[int]:
    """The prompt of SMDM's second GSM8K sample: question tokens then chain-of-thought tokens.

    Concatenated as token ids, never re-tokenised as one text: at inference the chain of thought
    is the first stage's generated ids, and training sees the same concatenation.
    """
    return list(question_ids) + list(cot_ids)


def _parse_gsm8k_line(text: str):
    question, sep, response = text.partition("||")
    if not sep:
        return "expected 'question||reasoning #### answer' (no '||' separator)"
    return "gsm8k", question, response


def _split_chain_of_thought(
    question_ids: list[int], response: str, tokenizer: Tokenizer
) -> tuple[SFTExample, SFTExample] | str:
    """SMDM's two samples of one GSM8K problem: question -> chain of thought, and
    question + chain of thought -> ``#### answer``.

    The second prompt is the first example's tokens, so at inference the answer stage sees
    exactly what the first stage produced; the answer keeps its leading space (``" #### 72"``),
    so the second example's text is the whole original line.
    """
    cut = response.rfind("####")
    if cut < 0:
        return "no '#### answer' in the response (needed by sft.gsm8k_split_cot)"
    cot = response[:cut].rstrip()
    if not cot.strip():
        return "empty chain of thought before '####' (needed by sft.gsm8k_split_cot)"
    if not response[cut + 4 :].strip():
        return "empty answer after '####'"
    cot_ids = list(tokenizer.encode(cot))
    answer_ids = list(tokenizer.encode(response[len(cot) :]))
    return (
        SFTExample(question_ids, cot_ids),
        SFTExample(gsm8k_answer_prompt_ids(question_ids, cot_ids), answer_ids),
    )


def iter_sft_examples(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    template: ChatTemplate | None = None,
    fmt: str = "auto",
    gsm8k_split_cot: bool = False,
) -> Iterator[SFTExample]:
    """Examples of one file, read line by line (see :func:`iter_sft_groups`)."""
    for group in iter_sft_groups(path, tokenizer, template, fmt, gsm8k_split_cot):
        yield from group


def iter_sft_groups(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    template: ChatTemplate | None = None,
    fmt: str = "auto",
    gsm8k_split_cot: bool = False,
) -> Iterator[tuple[SFTExample, ...]]:
    """The examples of each line of one file, as a tuple (two for a split GSM8K problem), so a
    held-out split can keep both samples of a problem on the same side. Read line by line
    (memory stays flat whatever the file size).

    ``fmt`` is one of :data:`SFT_FORMATS`; ``auto`` reads a ``.txt`` file as ``gsm8k_icot``
    and decides per jsonl record. ``gsm8k_split_cot`` turns each GSM8K problem (either GSM8K
    format) into SMDM's two examples; other records stay one example each.
    Blank lines are skipped. Any bad line raises :class:`SFTDataError` naming file and line.
    """
    if fmt not in SFT_FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {SFT_FORMATS}")
    path = Path(path)
    template = template or ChatTemplate()
    icot = fmt == "gsm8k_icot" or (fmt == "auto" and path.suffix.lower() == ".txt")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise SFTDataError(path, lineno, f"not UTF-8 ({exc.reason})") from None
            if not text.strip():
                continue
            try:
                parsed = (
                    _parse_gsm8k_line(text)
                    if icot
                    else _parse_json_record(text, tokenizer, template, fmt)
                )
            except ValueError as exc:  # e.g. a chat template that rejects the messages
                raise SFTDataError(path, lineno, str(exc).splitlines()[0]) from None
            if isinstance(parsed, str):
                raise SFTDataError(path, lineno, parsed)
            kind, prompt, response = parsed
            if not response.strip():
                raise SFTDataError(path, lineno, "empty response")
            prompt_ids = list(tokenizer.encode(prompt))
            if kind == "gsm8k" and gsm8k_split_cot:
                pair = _split_chain_of_thought(prompt_ids, response, tokenizer)
                if isinstance(pair, str):
                    raise SFTDataError(path, lineno, pair)
                yield pair
                continue
            response_ids = list(tokenizer.encode(response))
            if not response_ids:
                raise SFTDataError(path, lineno, "response encodes to no tokens")
            yield (SFTExample(prompt_ids, response_ids),)


def load_sft_examples(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    template: ChatTemplate | None = None,
    fmt: str = "auto",
    gsm8k_split_cot: bool = False,
) -> list[SFTExample]:
    """All examples of ``path`` (see :func:`iter_sft_examples`)."""
    return list(iter_sft_examples(path, tokenizer, template, fmt, gsm8k_split_cot))


# ---------------------------------------------------------------------------------------------
# Fitting to the sequence length


@dataclass
class TruncationReport:
    """What :func:`fit_examples` changed, so a run can log it (``summary()``) and tests can
    check it: shortened examples teach an answer that stops early, dropped ones are lost data."""

    policy: str
    seq_length: int
    seen: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens_removed: int = 0  # tokens cut from truncated examples (dropped ones not counted)
    drop_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.seen - self.dropped

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def summary(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.drop_reasons.items()))
        return (
            f"SFT truncation (policy={self.policy}, seq_length={self.seq_length}): "
            f"{self.seen} examples, {self.truncated} truncated ({self.tokens_removed} tokens "
            f"removed), {self.dropped} dropped" + (f" ({reasons})" if reasons else "")
        )


def fit_examples(
    examples: Sequence[SFTExample], seq_length: int, truncation: str = "response"
) -> tuple[list[SFTExample], TruncationReport]:
    """Examples that fit ``prompt + response + EOS`` in ``seq_length``, and what was changed.

    - ``response``: cut the response so one EOS still ends it (the model learns to stop there);
      an example whose prompt leaves no room for even one response token is dropped, since
      training on "prompt, then EOS at once" would teach the model to give no answer.
    - ``prompt_left``: drop prompt tokens from the left (the end of the prompt, next to the
      answer, matters most); dropped when the response and EOS alone need the whole sequence.
    - ``drop``: skip every example that does not fit.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation {truncation!r}: choose one of {TRUNCATION_POLICIES}")
    if seq_length < 2:
        raise ValueError(f"seq_length {seq_length} leaves no room for a response and EOS")
    report = TruncationReport(truncation, seq_length)
    kept: list[SFTExample] = []
    for ex in examples:
        report.seen += 1
        p, r = len(ex.prompt_ids), len(ex.response_ids)
        if p + r + 1 <= seq_length:
            kept.append(ex)
            continue
        if truncation == "drop":
            report._drop("too long")
            continue
        if truncation == "response":
            room = seq_length - p - 1
            if room < 1:
                report._drop("prompt leaves no room for a response")
                continue
            kept.append(SFTExample(ex.prompt_ids, ex.response_ids[:room]))
            report.tokens_removed += r - room
        else:
            room = seq_length - r - 1
            if room < 1:
                report._drop("response alone fills the sequence")
                continue
            kept.append(SFTExample(ex.prompt_ids[p - room :], ex.response_ids))
            report.tokens_removed += p - room
        report.truncated += 1
    return kept, report


# ---------------------------------------------------------------------------------------------
# Micro-batches


@dataclass
class SFTMicroBatch:
    """A :class:`~megatron_mdm.data.batches.MicroBatch` (same first four fields) plus the lengths
    the SFT loss normalises by."""

    inputs: torch.Tensor  # [b, L] x_t: masked response positions replaced by mask_id
    targets: torch.Tensor  # [b, L] x0
    masked: torch.Tensor  # [b, L] bool, True only at response positions (EOS pads included)
    p_mask: torch.Tensor  # [b] masking probability per sequence
    prompt_lengths: torch.Tensor  # [b] long
    response_lengths: torch.Tensor  # [b] long: L - prompt length (response + EOS pads)

    def to(self, device) -> SFTMicroBatch:
        return SFTMicroBatch(
            *(
                t.to(device, non_blocking=True)
                for t in (
                    self.inputs,
                    self.targets,
                    self.masked,
                    self.p_mask,
                    self.prompt_lengths,
                    self.response_lengths,
                )
            )
        )

    @property
    def num_tokens(self) -> int:
        return self.inputs.numel()

    def model_kwargs(self) -> dict:
        """Extra model inputs (none: one copy of the sequence)."""
        return {}

    @property
    def model_length(self) -> int:
        return self.inputs.shape[1]


def _padded_rows(
    examples: Sequence[SFTExample], length: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompt + response`` then EOS up to ``length`` per row [b, length]; prompt lengths [b]."""
    rows = [ex.prompt_ids + ex.response_ids for ex in examples]
    x0 = torch.tensor([row + [eos_id] * (length - len(row)) for row in rows], dtype=torch.long)
    return x0, torch.tensor([len(ex.prompt_ids) for ex in examples], dtype=torch.long)


def build_sft_arm_micro_batch(
    examples: Sequence[SFTExample], length: int, eos_id: int
) -> SFTMicroBatch:
    """Next-token SFT for autoregressive baselines: input ``x[:-1]``, target ``x[1:]``.

    Expressed as an :class:`SFTMicroBatch` so one loss serves both objectives: ``masked`` marks
    the targets that are response tokens (EOS pads included, the first one ends the answer),
    ``p_mask`` is 1 and ``response_lengths`` counts those targets, so :func:`sft_loss` is the
    mean next-token CE over response tokens (per sequence, or per token). No masking draws.
    """
    needed = max(len(ex.prompt_ids) + len(ex.response_ids) + 1 for ex in examples)
    if not needed <= length:
        raise ValueError(f"length {length} < {needed} tokens needed; run fit_examples first")
    x0, prompt_len = _padded_rows(examples, length, eos_id)
    target_pos = torch.arange(1, length)[None, :]  # target j is token j + 1
    masked = target_pos >= prompt_len[:, None]
    return SFTMicroBatch(
        inputs=x0[:, :-1],
        targets=x0[:, 1:],
        masked=masked,
        p_mask=torch.ones(len(examples)),
        prompt_lengths=prompt_len,
        response_lengths=masked.sum(dim=1),
    )


def build_sft_micro_batch(
    examples: Sequence[SFTExample],
    seq_length: int,
    pad_to: str,
    eos_id: int,
    mask_id: int,
    seed: int,
    key,
    positions: Sequence[int],
    eps: float = 1e-3,
    length: int | None = None,
) -> SFTMicroBatch:
    """Pad ``examples`` with EOS and mask their responses; ``positions`` are the examples'
    positions in the global batch and key every random draw.

    ``pad_to="max"`` pads to ``seq_length`` (fixed shapes), ``"longest"`` to the longest example
    of this micro-batch (less compute; the denominator of the loss changes with it, as in
    LLaDA). Examples must already fit (:func:`fit_examples`). Each sample draws
    ``t ~ U[0, 1)`` and ``seq_length`` uniforms whatever the padded length, so its mask at a given
    position is the same under either padding and any micro-batch split.

    ``length`` (if given) overrides ``pad_to``: pad to exactly that many tokens. The trainer
    passes the longest example of the whole global batch, so every micro-batch of a step has
    one shape (a pipeline schedule needs that) and the loss does not depend on how the batch
    is split into micro-batches or ranks.
    """
    if pad_to not in PAD_TO:
        raise ValueError(f"pad_to {pad_to!r}: choose one of {PAD_TO}")
    if len(examples) != len(positions):
        raise ValueError(f"{len(examples)} examples but {len(positions)} positions")
    if not examples:
        raise ValueError("a micro-batch needs at least one example")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps {eps} must be in [0, 1)")
    needed = [len(ex.prompt_ids) + len(ex.response_ids) + 1 for ex in examples]
    for pos, n in zip(positions, needed, strict=True):
        if n > seq_length:
            raise ValueError(
                f"example at position {pos} needs {n} tokens > seq_length {seq_length}; "
                "run fit_examples first"
            )
    if length is None:
        length = seq_length if pad_to == "max" else max(needed)
    elif not max(needed) <= length <= seq_length:
        raise ValueError(f"length {length} outside [{max(needed)}, seq_length {seq_length}]")
    x0, prompt_len = _padded_rows(examples, length, eos_id)
    masked, p = response_mask(prompt_len, length, seq_length, seed, key, positions, eps)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return SFTMicroBatch(
        inputs=xt,
        targets=x0,
        masked=masked,
        p_mask=p,
        prompt_lengths=prompt_len,
        response_lengths=length - prompt_len,
    )
