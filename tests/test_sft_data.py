"""SFT data (docs/design.md §4): loading formats, truncation, keyed response-only masking, the
loss."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_mdm.data.sft import (
    ChatTemplate,
    SFTDataError,
    SFTExample,
    build_sft_micro_batch,
    fit_examples,
    load_sft_examples,
)
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.diffusion.sft_loss import sft_loss

TOK = build_tokenizer("byte", None)
EOS = TOK.eos_id
MASK = TOK.vocab_size  # the model's [MASK] id sits just past the tokenizer's ids
GSM8K_TXT = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train_icot_format.txt"
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jsonl(path: Path, records: list) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def ex(prompt: int, response: int, start: int = 0) -> SFTExample:
    """An example of the given lengths with distinct, recognisable ids (never EOS)."""
    return SFTExample(
        [65 + (start + i) % 26 for i in range(prompt)],
        [97 + (start + i) % 26 for i in range(response)],
    )


BATCH = [ex(5, 3), ex(2, 9, 1), ex(7, 1, 2), ex(0, 4, 3)]


# ---------------------------------------------------------------------------------------------
# Loading


def test_prompt_response_jsonl(tmp_path):
    path = jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "2+2=", "response": "4"}, {"prompt": "", "response": "hé", "id": 7}],
    )
    path.write_text(path.read_text() + "\n  \n", encoding="utf-8")  # blank lines are skipped
    got = load_sft_examples(path, TOK)
    assert got == [
        SFTExample(TOK.encode("2+2="), TOK.encode("4")),
        SFTExample([], TOK.encode("hé")),
    ]


def test_chat_messages_use_the_template(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi {there}"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    (got,) = load_sft_examples(path, TOK)
    prompt = (
        "<|system|>\nBe brief.\n<|user|>\nHi {there}\n<|assistant|>\nHello.\n"
        "<|user|>\n2+2?\n<|assistant|>\n"
    )
    assert TOK.decode(got.prompt_ids) == prompt
    assert TOK.decode(got.response_ids) == "4"

    custom = ChatTemplate(message_format="[{role}] {content} ", generation_prefix="[assistant] ")
    (got,) = load_sft_examples(path, TOK, custom)
    assert TOK.decode(got.prompt_ids).startswith("[system] Be brief. [user] Hi {there} ")
    assert TOK.decode(got.prompt_ids).endswith("[user] 2+2? [assistant] ")


class _FakeHF:
    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<gen>"


class _WrappedTokenizer:
    """The interface of tokenizers.py plus the transformers object it wraps, as ``hf``."""

    def __init__(self):
        self.hf = _FakeHF()

    def encode(self, text):
        return TOK.encode(text)


def test_tokenizer_chat_template_is_opt_in(tmp_path):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    template = ChatTemplate(use_tokenizer_template=True)
    (got,) = load_sft_examples(path, _WrappedTokenizer(), template)
    assert TOK.decode(got.prompt_ids) == "<user>q<gen>"
    with pytest.raises(SFTDataError, match=r"chat\.jsonl:1: .*apply_chat_template"):
        load_sft_examples(path, TOK, template)


def test_gsm8k_text_format(tmp_path):
    path = write_lines(
        tmp_path / "gsm.txt",
        ["What is 2+3?||2+3 = 5. #### 5", "Half of 8?||8 / 2 = 4. #### 4"],
    )
    got = load_sft_examples(path, TOK)
    assert [TOK.decode(e.prompt_ids) for e in got] == ["What is 2+3?", "Half of 8?"]
    assert [TOK.decode(e.response_ids) for e in got] == ["2+3 = 5. #### 5", "8 / 2 = 4. #### 4"]


GSM8K_RECORD = {
    "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
    "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n"
    "In all she sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}
GSM8K_LINE = (
    "Natalia sold 48 clips in April and half as many in May. How many in all?||"
    "In May she sold 48/2 = 24 clips. In all she sold 48+24 = 72 clips. #### 72"
)


def test_gsm8k_jsonl_reads_as_the_line_format(tmp_path):
    """The released GSM8K jsonl (calculator notes, one step per line) gives the same examples
    as its `question||reasoning #### answer` line, whether named or detected."""
    from_txt = load_sft_examples(write_lines(tmp_path / "g.txt", [GSM8K_LINE]), TOK)
    path = jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD])
    assert load_sft_examples(path, TOK) == from_txt
    assert load_sft_examples(path, TOK, fmt="gsm8k") == from_txt
    (got,) = from_txt
    assert TOK.decode(got.response_ids).endswith("= 72 clips. #### 72")
    assert "<<" not in TOK.decode(got.response_ids)


@pytest.mark.parametrize("fmt", ["gsm8k", "gsm8k_icot"])
def test_gsm8k_split_cot_gives_smdm_two_samples(tmp_path, fmt):
    path = (
        jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD, GSM8K_RECORD])
        if fmt == "gsm8k"
        else write_lines(tmp_path / "g.jsonl", [GSM8K_LINE, GSM8K_LINE])  # named, any suffix
    )
    got = load_sft_examples(path, TOK, fmt=fmt, gsm8k_split_cot=True)
    assert len(got) == 4 and got[:2] == got[2:]
    cot, answer = got[:2]
    question, rest = GSM8K_LINE.split("||")
    assert TOK.decode(cot.prompt_ids) == question
    assert TOK.decode(cot.response_ids) == rest[: rest.index(" ####")]
    # the answer stage sees exactly question + chain of thought, then learns " #### 72"
    assert answer.prompt_ids == cot.prompt_ids + cot.response_ids
    assert TOK.decode(answer.response_ids) == " #### 72"
    # ... and together they are the unsplit example's text
    (whole,) = load_sft_examples(write_lines(tmp_path / "w.txt", [GSM8K_LINE]), TOK)
    assert answer.prompt_ids + answer.response_ids == whole.prompt_ids + whole.response_ids


def test_split_cot_leaves_other_records_whole(tmp_path):
    path = jsonl(tmp_path / "mix.jsonl", [{"prompt": "p", "response": "r #### 1"}, GSM8K_RECORD])
    got = load_sft_examples(path, TOK, gsm8k_split_cot=True)
    assert len(got) == 3 and TOK.decode(got[0].response_ids) == "r #### 1"


@pytest.mark.parametrize(
    "fmt, split, lines, problem",
    [
        ("gsm8k_icot", True, ["q||just reasoning"], "no '#### answer'"),
        ("gsm8k_icot", True, ["q|| #### 5"], "empty chain of thought"),
        ("gsm8k_icot", True, ["q||r ####  "], "empty answer"),
        ("gsm8k", False, ['{"question": "q"}'], r"missing key 'answer' \(gsm8k; has 'question'\)"),
        ("gsm8k", False, ['{"question": "q", "answer": 3}'], "must be strings"),
        ("chat", False, ['{"prompt": "p", "response": "r"}'], "missing key 'messages'"),
        ("prompt_response", False, ['{"messages": []}'], "missing key 'prompt' and 'response'"),
    ],
)
def test_named_format_errors(tmp_path, fmt, split, lines, problem):
    path = write_lines(tmp_path / "x.jsonl", lines)
    with pytest.raises(SFTDataError, match=rf"^{re.escape(str(path))}:1: .*{problem}"):
        load_sft_examples(path, TOK, fmt=fmt, gsm8k_split_cot=split)
    with pytest.raises(ValueError, match="format"):
        load_sft_examples(path, TOK, fmt="csv")


@pytest.mark.skipif(
    not (GSM8K_TXT.is_file() and GSM8K_TXT.with_name("train.jsonl").is_file()),
    reason="../shared/data/gsm8k (train_icot_format.txt, train.jsonl) not present",
)
def test_gsm8k_shared_files_load_and_split():
    txt = load_sft_examples(GSM8K_TXT, TOK, gsm8k_split_cot=True)
    assert len(txt) == 2 * 6973
    assert all(TOK.decode(e.response_ids).startswith(" #### ") for e in txt[1::2])
    released = GSM8K_TXT.with_name("train.jsonl")
    got = load_sft_examples(released, TOK)
    assert len(got) == 7473
    assert all("<<" not in TOK.decode(e.response_ids) for e in got)
    assert all(re.search(r" #### -?[\d,.]+$", TOK.decode(e.response_ids)) for e in got)


@pytest.mark.skipif(not GSM8K_TXT.is_file(), reason="../shared/data/gsm8k not present")
def test_gsm8k_shared_file_loads():
    got = load_sft_examples(GSM8K_TXT, TOK)
    assert len(got) == 6973
    assert all("####" in TOK.decode(e.response_ids) for e in got)
    assert all("||" not in TOK.decode(e.prompt_ids) for e in got)


@pytest.mark.parametrize(
    "name, lines, line, problem",
    [
        ("a.jsonl", ['{"prompt": "p", "response": "r"}', "{not json"], 2, "invalid JSON"),
        (
            "b.jsonl",
            ['{"prompt": "p", "answer": "r"}'],
            1,
            r"missing key 'response' .*has 'prompt', 'answer'",
        ),
        ("c.jsonl", ["", "", '{"prompt": "p", "response": "  "}'], 3, "empty response"),
        (
            "d.jsonl",
            [json.dumps({"messages": [{"role": "assistant", "content": "a"}]})],
            1,
            "wrong role order",
        ),
        (
            "e.jsonl",
            [
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a"},
                            {"role": "user", "content": "q2"},
                        ]
                    }
                )
            ],
            1,
            "wrong role order",
        ),
        (
            "f.jsonl",
            [json.dumps({"messages": [{"role": "bot", "content": "a"}]})],
            1,
            "unknown role 'bot'",
        ),
        ("g.jsonl", ["[1, 2]"], 1, "expected a JSON object"),
        ("h.txt", ["q||r #### 1", "no separator here"], 2, "no '\\|\\|' separator"),
        ("i.txt", ["question only||"], 1, "empty response"),
    ],
)
def test_errors_name_file_and_line(tmp_path, name, lines, line, problem):
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(SFTDataError, match=rf"^{re.escape(str(path))}:{line}: .*{problem}") as info:
        load_sft_examples(path, TOK)
    assert isinstance(info.value, ValueError)
    assert info.value.line == line and "\n" not in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_non_utf8_line_is_reported(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"prompt": "p", "response": "r"}\n\xff\xfe\n')
    with pytest.raises(SFTDataError, match=rf"^{re.escape(str(path))}:2: not UTF-8"):
        load_sft_examples(path, TOK)


# ---------------------------------------------------------------------------------------------
# Micro-batches and masking


def batch(examples=BATCH, seq=16, pad_to="max", seed=3, key=0, positions=None):
    positions = list(range(len(examples))) if positions is None else positions
    return build_sft_micro_batch(examples, seq, pad_to, EOS, MASK, seed, key, positions)


def test_sequence_layout_and_eos_padding():
    mb = batch()
    assert mb.targets.shape == (4, 16) and mb.targets.dtype == torch.long
    for b, e in enumerate(BATCH):
        p, r = len(e.prompt_ids), len(e.response_ids)
        row = mb.targets[b].tolist()
        assert row == e.prompt_ids + e.response_ids + [EOS] * (16 - p - r)
        assert mb.prompt_lengths[b] == p and mb.response_lengths[b] == 16 - p
    assert mb.prompt_lengths.dtype == torch.long and mb.response_lengths.dtype == torch.long
    assert torch.equal(
        mb.inputs, torch.where(mb.masked, torch.full_like(mb.targets, MASK), mb.targets)
    )


def test_prompt_never_masked_responses_and_pads_are():
    ever_masked = torch.zeros(4, 16, dtype=torch.bool)
    for seed in range(300):
        mb = batch(seed=seed, key=("step", seed % 7))
        prompt = torch.arange(16)[None, :] < mb.prompt_lengths[:, None]
        assert not (mb.masked & prompt).any()
        assert torch.equal(mb.inputs[prompt], mb.targets[prompt])
        assert ((mb.p_mask >= 1e-3) & (mb.p_mask < 1.0)).all()
        ever_masked |= mb.masked
    # every response position, EOS pads included, gets masked (so it is learned) at some seed
    assert torch.equal(ever_masked, torch.arange(16)[None, :] >= mb.prompt_lengths[:, None])


def test_mask_rate_follows_p():
    mb = build_sft_micro_batch([ex(4, 1000)], 2000, "max", EOS, MASK, 0, 0, [0])
    rate = mb.masked[0, 4:].float().mean().item()
    assert abs(rate - mb.p_mask[0].item()) < 0.05


def test_pad_to_longest_vs_max():
    full = batch(pad_to="max")
    short = batch(pad_to="longest")
    longest = max(len(e.prompt_ids) + len(e.response_ids) + 1 for e in BATCH)
    assert longest == 12 and short.targets.shape == (4, longest)
    assert torch.equal(short.targets, full.targets[:, :longest])
    assert torch.equal(short.masked, full.masked[:, :longest])  # keyed draws, not the shape
    assert torch.equal(short.p_mask, full.p_mask)
    assert torch.equal(short.response_lengths, longest - short.prompt_lengths)
    # the longest example still ends with its EOS
    assert short.targets[1, -1] == EOS


def test_masks_do_not_depend_on_the_micro_batch_split():
    positions = [8, 9, 10, 11]
    whole = batch(positions=positions, key=5)
    halves = [batch(BATCH[i : i + 2], positions=positions[i : i + 2], key=5) for i in (0, 2)]
    singles = [batch([BATCH[i]], positions=[positions[i]], key=5) for i in range(4)]
    for parts in (halves, singles):
        for name in ("inputs", "targets", "masked", "p_mask", "response_lengths"):
            got = torch.cat([getattr(p, name) for p in parts])
            assert torch.equal(got, getattr(whole, name)), name
    # ... but they do depend on seed, key and position
    assert not torch.equal(batch(positions=positions, key=6).masked, whole.masked)
    assert not torch.equal(batch(positions=[0, 1, 2, 3], key=5).masked, whole.masked)


def test_build_rejects_bad_input():
    with pytest.raises(ValueError, match="run fit_examples first"):
        batch([ex(10, 6)], seq=16)
    with pytest.raises(ValueError, match="pad_to"):
        batch(pad_to="min")
    with pytest.raises(ValueError, match="positions"):
        batch(positions=[0, 1])


# ---------------------------------------------------------------------------------------------
# Truncation


def test_truncation_response_policy():
    examples = [ex(3, 4), ex(4, 20), ex(16, 2), ex(15, 2), ex(14, 5)]
    kept, report = fit_examples(examples, 16, "response")
    assert [(len(e.prompt_ids), len(e.response_ids)) for e in kept] == [(3, 4), (4, 11), (14, 1)]
    assert kept[1].response_ids == examples[1].response_ids[:11]
    assert kept[1].prompt_ids == examples[1].prompt_ids
    assert (report.seen, report.kept, report.truncated, report.dropped) == (5, 3, 2, 2)
    assert report.tokens_removed == 9 + 4
    assert report.summary() == (
        "SFT truncation (policy=response, seq_length=16): 5 examples, 2 truncated "
        "(13 tokens removed), 2 dropped (prompt leaves no room for a response: 2)"
    )
    mb = batch(kept, seq=16, positions=[0, 1, 2])
    assert (mb.targets[:, -1] == EOS).all()  # at least one EOS after every truncated response


def test_truncation_prompt_left_policy():
    examples = [ex(10, 3), ex(10, 10), ex(2, 15), ex(3, 30)]
    kept, report = fit_examples(examples, 16, "prompt_left")
    assert [(len(e.prompt_ids), len(e.response_ids)) for e in kept] == [(10, 3), (5, 10)]
    assert kept[1].prompt_ids == examples[1].prompt_ids[-5:]
    assert kept[1].response_ids == examples[1].response_ids
    assert (report.truncated, report.dropped, report.tokens_removed) == (1, 2, 5)
    assert "2 dropped (response alone fills the sequence: 2)" in report.summary()


def test_truncation_drop_policy():
    examples = [ex(3, 12), ex(3, 13), ex(0, 40)]
    kept, report = fit_examples(examples, 16, "drop")
    assert kept == examples[:1]
    assert (report.truncated, report.dropped, report.kept) == (0, 2, 1)
    assert report.summary().endswith("0 truncated (0 tokens removed), 2 dropped (too long: 2)")
    with pytest.raises(ValueError, match="truncation"):
        fit_examples(examples, 16, "left")


# ---------------------------------------------------------------------------------------------
# Loss


def loop_loss(ce, masked, p, prompt_lengths, length, normalize):
    """docs/design.md §4 written out element by element."""
    b_size = ce.shape[0]
    per_seq, total, tokens = [], 0.0, 0
    for b in range(b_size):
        s = 0.0
        for i in range(int(prompt_lengths[b]), length):
            if masked[b, i]:
                s += ce[b, i].item() / p[b].item()
        resp = length - int(prompt_lengths[b])
        per_seq.append(s / resp)
        total += s
        tokens += resp
    return sum(per_seq) / b_size if normalize == "sequence" else total / tokens


@pytest.mark.parametrize("normalize", ["sequence", "token"])
@pytest.mark.parametrize("pad_to", ["max", "longest"])
def test_sft_loss_matches_loop(normalize, pad_to):
    gen = torch.Generator().manual_seed(0)
    for seed in range(5):
        mb = batch(pad_to=pad_to, seed=seed)
        logits = torch.randn(*mb.targets.shape, TOK.vocab_size + 1, generator=gen)
        ce = F.cross_entropy(logits.transpose(1, 2), mb.targets, reduction="none")
        got = sft_loss(ce, mb.masked, mb.p_mask, mb.response_lengths, normalize)
        length = mb.targets.shape[1]
        want = loop_loss(ce, mb.masked, mb.p_mask, mb.prompt_lengths, length, normalize)
        assert got.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        sft_loss(ce, mb.masked, mb.p_mask, mb.response_lengths, "batch")


def test_prompt_positions_get_zero_gradient():
    mb = batch(seed=11)
    prompt = torch.arange(16)[None, :] < mb.prompt_lengths[:, None]
    assert mb.masked.any()
    logits = torch.randn(4, 16, TOK.vocab_size + 1, requires_grad=True)
    for normalize in ("sequence", "token"):
        logits.grad = None
        ce = F.cross_entropy(logits.transpose(1, 2), mb.targets, reduction="none")
        loss = sft_loss(ce, mb.masked, mb.p_mask, mb.response_lengths, normalize)
        loss.backward()
        row_grad = logits.grad.abs().sum(-1)
        assert (row_grad[prompt] == 0).all()
        assert (row_grad[~mb.masked] == 0).all()
        assert (row_grad[mb.masked] > 0).all()
