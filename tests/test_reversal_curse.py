"""The reversal-curse example: a deterministic generator whose splits never leak a test fact,
the exact-match evaluator, and an end-to-end smoke run of `examples/reversal_curse/run.py`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, subprocess_env

sys.path.insert(0, str(ROOT / "examples" / "reversal_curse"))

import reversal_eval  # noqa: E402
import reversal_facts  # noqa: E402
from reversal_facts import build_dataset  # noqa: E402

from megatron_mdm.data.byte_tokenizer import ByteTokenizer  # noqa: E402
from megatron_mdm.data.tokenizers import build_tokenizer  # noqa: E402


def _load_run_module():
    """examples/reversal_curse/run.py under a name that cannot clash with other modules."""
    spec = importlib.util.spec_from_file_location(
        "reversal_curse_run", ROOT / "examples" / "reversal_curse" / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_generator_is_deterministic_and_seed_dependent():
    a = build_dataset(seed=11, per_subset=12, both=7).to_json()
    b = build_dataset(seed=11, per_subset=12, both=7).to_json()
    c = build_dataset(seed=12, per_subset=12, both=7).to_json()
    assert a == b
    assert a["people"] != c["people"]
    assert a["train_documents"] != c["train_documents"]


def test_people_are_unique_and_subsets_sized():
    data = build_dataset(seed=3, per_subset=25, both=40)
    names = [p.name for p in data.people]
    descriptions = [p.description for p in data.people]
    assert len(set(names)) == len(names) == 90
    assert len(set(descriptions)) == len(descriptions)
    counts = {s: sum(p.subset == s for p in data.people) for s in reversal_facts.SUBSETS}
    assert counts == {"name_to_description": 25, "description_to_name": 25, "both": 40}
    # one document per direction trained: 1 + 1 + 2 per person
    assert len(data.train_documents) == 25 + 25 + 2 * 40
    # two queries (forward, reverse) per test person, none for the "both" subset
    assert len(data.queries) == 2 * 50
    assert {q.subset for q in data.queries} == set(reversal_facts.TEST_SUBSETS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_written_training_text_never_contains_a_reversed_test_fact(tmp_path, seed):
    """Checked on the file `mdm train` reads, from the people list alone (not from the queries
    or the generator's own leak check): a test person's untrained order never appears, not even
    across a document boundary, while the trained order appears exactly once."""
    data = build_dataset(seed=seed, per_subset=20, both=20)
    text_path, _ = data.write(tmp_path)
    text = text_path.read_text()
    flat = text.replace("\n", " ")
    for p in data.people:
        name_first = f"{p.name} is {p.description}"
        desc_first = f"{p.description} is {p.name}"
        if p.subset == "name_to_description":
            trained, untrained = name_first, desc_first
        elif p.subset == "description_to_name":
            trained, untrained = desc_first, name_first
        else:
            assert name_first in text and desc_first in text
            continue
        assert untrained not in flat, untrained
        assert text.count(trained) == 1
        # the description occurs only in its own trained document: no paraphrase leaks it
        assert text.count(p.description) == 1


def test_queries_are_the_trained_and_untrained_orders():
    data = build_dataset(seed=5, per_subset=6, both=2)
    docs = set(data.train_documents)
    for q in data.queries:
        p = data.people[q.person]
        full = q.text
        assert q.prompt.endswith(" is") and full == f"{q.prompt} {q.answer}"
        assert {q.prompt[:-3], q.answer} == {p.name, p.description}
        if q.direction == "forward":
            assert full in docs
        else:
            assert all(full not in d for d in docs)


def test_leak_check_catches_a_planted_leak():
    data = build_dataset(seed=4, per_subset=5, both=0)
    reverse = data.queries_for("reverse")[0]
    leaked = [*data.train_documents, f"intro. {reverse.prompt} {reverse.answer} outro"]
    with pytest.raises(AssertionError, match="leaked"):
        reversal_facts.assert_no_leak(leaked, data.queries)
    reversal_facts.assert_no_leak(data.train_documents, data.queries)


def test_too_many_people_fails_clearly():
    with pytest.raises(ValueError, match="unique names"):
        build_dataset(seed=0, per_subset=1000)


def test_word_tokenizer_covers_every_query_and_splits_answers_at_the_prompt(tmp_path):
    """Every query word is a known piece (no <unk>, id 0), text round-trips, and the answer ids
    `answer_tokens` gives are exactly the pieces that follow the prompt's in the whole fact."""
    data = build_dataset(seed=2, per_subset=15, both=15)
    text, _ = data.write(tmp_path)
    model = _load_run_module().word_tokenizer(text, tmp_path / "tok")
    tok = build_tokenizer("sentencepiece", str(model))

    class _M:
        tokenizer, eos_id = tok, tok.eos_id

    for q in data.queries:
        ids = tok.encode(q.text)
        assert 0 not in ids and tok.decode(ids) == q.text
        assert len(ids) == len(q.text.split())  # one piece per word
        prompt, answer = reversal_eval.answer_tokens(_M, q.__dict__)
        assert prompt[0] == tok.eos_id and prompt[1:] + answer == ids
        assert tok.decode(answer).strip() == q.answer


def test_exact_match_normalisation():
    assert reversal_eval.exact_match(" Daphne Barrington.", "Daphne Barrington.")
    assert reversal_eval.exact_match("Daphne Barrington", "Daphne Barrington.")
    assert reversal_eval.exact_match("the composer of x.  ", "the composer of x.")
    assert not reversal_eval.exact_match("Daphne Barringto.", "Daphne Barrington.")
    assert not reversal_eval.exact_match("daphne barrington.", "Daphne Barrington.")
    assert not reversal_eval.exact_match("Daphne Barrington..", "Daphne Barrington.")
    assert not reversal_eval.exact_match("", "Daphne Barrington.")


VOCAB = 262  # byte tokenizer 259 + [MASK] + padding: logits wider than the tokenizer
MASK_ID = 259


class Oracle:
    """A stand-in language model that knows a set of documents (each framed by EOS).

    Without `[MASK]` in a row it acts as an ARM: the last position puts all mass on the byte that
    follows the row in the document it is a prefix of. With masks it acts as a denoiser: every
    position gets the byte of the document that the row's unmasked prefix starts. Rows that match
    no document get flat logits (argmax: byte 0, never a right answer)."""

    def __init__(self, docs: list[str], eos_id: int):
        tok = ByteTokenizer()
        self.docs = [[eos_id, *tok.encode(d), eos_id] for d in docs]
        self.calls = 0

    def _document(self, prefix: list[int]) -> list[int] | None:
        return next((d for d in self.docs if d[: len(prefix)] == prefix), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = torch.full((*x.shape, VOCAB), -10.0)
        logits[..., MASK_ID:] = -torch.inf
        for b, row in enumerate(x.tolist()):
            if MASK_ID in row:
                doc = self._document(row[: row.index(MASK_ID)])
                for i in range(min(len(row), len(doc or []))):
                    logits[b, i, doc[i]] = 10.0
            else:
                doc = self._document(row)
                if doc is not None and len(row) < len(doc):
                    logits[b, -1, doc[len(row)]] = 10.0
        return logits


def test_arm_greedy_follows_the_model_and_stops_at_eos():
    tok = ByteTokenizer()
    oracle = Oracle(["Ada Lovelace is the author of the notes"], tok.eos_id)
    prompt = [tok.eos_id, *tok.encode("Ada Lovelace is")]
    out = reversal_eval.arm_greedy(oracle, prompt, max_new_tokens=100, eos_id=tok.eos_id)
    assert tok.decode(out) == " the author of the notes"
    assert oracle.calls == len(out) + 1  # the last call produced EOS
    short = reversal_eval.arm_greedy(oracle, prompt, max_new_tokens=7, eos_id=tok.eos_id)
    assert tok.decode(short) == " the au"


def test_mdm_fill_returns_exactly_gen_length_tokens_of_the_known_document():
    tok = ByteTokenizer()
    oracle = Oracle(["Ada Lovelace is the author of the notes"], tok.eos_id)
    prompt = [tok.eos_id, *tok.encode("Ada Lovelace is")]
    answer = tok.encode(" the author of the notes")
    out = reversal_eval.mdm_fill(oracle, prompt, len(answer), MASK_ID)
    assert out == answer


class _Model:
    def __init__(self, objective: str, model_fn):
        self.objective = objective
        self.model_fn = model_fn
        self.tokenizer = ByteTokenizer()
        self.eos_id = self.tokenizer.eos_id
        self.mask_id = MASK_ID


@pytest.mark.parametrize("objective", ["arm", "mdm"])
def test_evaluate_scores_forward_and_reverse_separately(objective):
    """A model that knows exactly the training documents answers every forward query and no
    reverse one: accuracies 1 and 0, per subset too."""
    data = build_dataset(seed=9, per_subset=3, both=1)
    model = _Model(objective, Oracle(data.train_documents, ByteTokenizer().eos_id))
    queries = [q.__dict__ for q in data.queries]
    result = reversal_eval.evaluate(model, queries, progress=False)
    acc = result["accuracy"]
    assert acc["forward"] == 1.0 and acc["reverse"] == 0.0
    assert acc["name_to_description/forward"] == acc["description_to_name/forward"] == 1.0
    assert acc["name_to_description/reverse"] == acc["description_to_name/reverse"] == 0.0
    assert len(result["predictions"]) == len(queries)


def test_cfg_is_rejected_for_the_arm():
    data = build_dataset(seed=9, per_subset=1, both=0)
    model = _Model("arm", Oracle(data.train_documents, ByteTokenizer().eos_id))
    with pytest.raises(ValueError, match="MDM only"):
        reversal_eval.predict(model, data.queries[0].__dict__, cfg=1.0)


@pytest.mark.slow
def test_run_smoke_prints_the_four_accuracies(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/reversal_curse/run.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"llada", "berglund"}
    for protocol in last.values():
        assert protocol["seeds"] == [0]
        keys = {f"{m}_{d}" for m in ("mdm", "arm") for d in ("forward", "reverse")}
        assert set(protocol) == keys | {"seeds"}
        for k in keys:
            assert protocol[k]["std"] == 0.0 and 0.0 <= protocol[k]["mean"] <= 1.0
    for protocol in ("llada", "berglund"):
        for model in ("mdm", "arm"):
            assert (tmp_path / protocol / "seed0" / model / "checkpoints").is_dir()
    for model in ("mdm", "arm"):  # the Berglund protocol fine-tunes a pretrained model
        assert (tmp_path / "berglund" / "seed0" / f"pretrain_{model}" / "checkpoints").is_dir()
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["summary"] == last
    # cfg.py reuses that MDM
    proc = subprocess.run(
        [sys.executable, "examples/reversal_curse/cfg.py", "--smoke", "--out", str(tmp_path)]
        + ["--cfg", "0", "1", "--mc", "2"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training one" not in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cfg"] == [0.0, 1.0]
    for key in ("forward_acc", "reverse_acc", "forward_mc_acc", "reverse_mc_acc"):
        assert len(summary[key]) == 2 and all(0.0 <= v <= 1.0 for v in summary[key])
    assert all(v == v and v > 0 for v in summary["forward_nll"] + summary["reverse_nll"])


def test_mdm_fill_with_guidance_never_samples_the_ids_the_model_excludes():
    """The model's logits are -inf on `[MASK]` and padding in both CFG passes; guidance must not
    turn them into nan (which argmax picks) and so emit `[MASK]` as an answer token."""
    tok = ByteTokenizer()
    oracle = Oracle(["Ada Lovelace is the author of the notes"], tok.eos_id)
    prompt = [tok.eos_id, *tok.encode("Ada Lovelace is")]
    answer = tok.encode(" the author of the notes")
    for cfg in (0.5, 1.0, 2.0):
        assert reversal_eval.mdm_fill(oracle, prompt, len(answer), MASK_ID, cfg=cfg) == answer


# --- the LLaDA protocol (protocol_facts) and the Berglund protocol's pretraining corpus ---

import protocol_facts  # noqa: E402


class InfillOracle(Oracle):
    """As `Oracle`, but a row with masks is matched on all its unmasked positions (a document
    at least as long that agrees on them), so a masked span between prompt tokens is filled."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (x == MASK_ID).any():
            return super().__call__(x)
        self.calls += 1
        logits = torch.full((*x.shape, VOCAB), -10.0)
        logits[..., MASK_ID:] = -torch.inf
        for b, row in enumerate(x.tolist()):
            keep = [i for i, t in enumerate(row) if t != MASK_ID]
            doc = next(
                (d for d in self.docs if len(d) >= len(row) and all(d[i] == row[i] for i in keep)),
                None,
            )
            for i, token in enumerate((doc or [])[: len(row)]):
                logits[b, i, token] = 10.0
        return logits


def test_pair_dataset_subsets_queries_and_no_leak():
    data = protocol_facts.build_pair_dataset(seed=5, per_subset=6, both=4)
    assert data == protocol_facts.build_pair_dataset(seed=5, per_subset=6, both=4)
    assert data.train_documents != protocol_facts.build_pair_dataset(6, 6, 4).train_documents
    pair = [p for p in data.people if p["subset"] == "pair"]
    both = [p for p in data.people if p["subset"] == "both"]
    assert len(pair) == 6 and len(both) == 4 and len(data.train_documents) == 6 + 2 * 4
    docs = set(data.train_documents)
    for p in pair:  # trained as "A | B" only
        assert f"{p['name']} | {p['description']}" in docs
        assert f"{p['description']} | {p['name']}" not in docs
    for p in both:
        assert {f"{p['name']} | {p['description']}", f"{p['description']} | {p['name']}"} <= docs
    assert len(data.queries) == 12 and {q["direction"] for q in data.queries} == {
        "forward",
        "reverse",
    }
    q = next(q for q in data.queries if q["direction"] == "reverse")
    assert protocol_facts.prompt_layout(q, "mdm") == ("", q["first"], f"| {q['second']}")
    assert protocol_facts.prompt_layout(q, "arm") == (f"{q['second']} |", q["first"], "")


def test_pair_protocol_mdm_fills_in_place_arm_must_continue():
    """Models that know exactly the training texts: the MDM answers both directions (the
    reverse query is an infill of a trained text), the ARM only the forward one."""
    data = protocol_facts.build_pair_dataset(seed=2, per_subset=3, both=1)
    eos = ByteTokenizer().eos_id
    for objective, reverse in (("mdm", 1.0), ("arm", 0.0)):
        model = _Model(objective, InfillOracle(data.train_documents, eos))
        result = reversal_eval.evaluate_pairs(model, data.queries, progress=False)
        assert result["accuracy"] == {"forward": 1.0, "reverse": reverse}, objective
        assert len(result["predictions"]) == 6


def test_layout_tokens_split_the_whole_text():
    model = _Model("mdm", None)
    head, answer, tail = reversal_eval.layout_tokens(model, "", "Ada Lovelace", "| the author")
    tok = model.tokenizer
    assert head == [] and tok.decode(answer) == "Ada Lovelace"
    assert tok.decode(tail) == " | the author"
    head, answer, tail = reversal_eval.layout_tokens(model, "Ada |", "the author", "")
    assert tok.decode(head) == "Ada |" and tok.decode(answer) == " the author" and tail == []


def test_pretrain_corpus_states_other_people_both_ways():
    test = protocol_facts.build_pair_dataset(seed=1, per_subset=5, both=0)
    taken = {x for p in test.people for x in (p["name"], p["description"])}
    docs, people = protocol_facts.build_pretrain_corpus(1, people=20, per_person=4, taken=taken)
    assert len(docs) == 80 and len(people) == 20
    assert docs == protocol_facts.build_pretrain_corpus(1, 20, 4, taken)[0]
    for name, description in people:
        assert name not in taken and description not in taken
        mine = [d for d in docs if name in d and description in d]
        assert len(mine) == 4 and len(set(mine)) == 4  # distinct paraphrases
        assert sum(d.index(name) < d.index(description) for d in mine) == 2  # both orders
    with pytest.raises(ValueError):
        protocol_facts.build_pretrain_corpus(1, 3, 1, set())
