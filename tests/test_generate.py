"""`mdm generate` end to end: the same completion from the training checkpoint (megatron-core)
and from its exported `hf` folder (transformers), two independent implementations; tiny models
trained here on a trivially learnable pattern, sampled by the LLaDA and Fast-dLLM samplers, the
ARM decoder and the chat loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import QUICKSTART, ROOT, read_metrics, run_cli, run_mdm, subprocess_env


@pytest.mark.slow
def test_generate_from_checkpoint_and_hf_export_agree(tmp_path):
    run = tmp_path / "run"
    run_mdm(
        [
            "train",
            QUICKSTART,
            "model.seq_length=64",
            "train.max_steps=20",
            "train.warmup_steps=2",
            "train.micro_batch_size=8",
            "train.global_batch_size=8",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"train.output_dir={run}",
        ]
    )
    export = tmp_path / "hf"
    proc = run_cli(
        "convert",
        "export",
        str(run),
        str(export),
        "--format",
        "hf",
        "--dtype",
        "fp32",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sample = [
        "--prompt",
        "The old ",
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--block-length",
        "8",
        "--num-samples",
        "2",
        "--seed",
        "3",
    ]
    outputs = []
    for source in (["--ckpt", str(run)], ["--hf", str(export)]):
        proc = run_cli("generate", *source, *sample, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
        assert len(lines) == 2 and all(
            line.startswith("[0] The old ") or line.startswith("[1] The old ") for line in lines
        )
        outputs.append(lines)
    assert outputs[0] == outputs[1]


# ------------------------------------------------------------------ a trivially learnable pattern

PATTERN = "abcdefghijkl"  # one document per line: the token stream is a b ... l EOS a b ...
PATTERN_MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.seq_length=32",
    "train.warmup_steps=5",
    "train.micro_batch_size=16",
    "train.global_batch_size=16",
    "train.lr=5e-3",
    "train.min_lr=5e-4",
    "logging.interval=10",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.save_interval=1000",
]


@pytest.fixture(scope="module")
def pattern_runs(tmp_path_factory):
    """A tiny MDM (150 steps) and a tiny ARM (60 steps) trained on the repeated pattern.
    2000 lines: with a few hundred, the 0.1% test split of data.split gets no document."""
    root = tmp_path_factory.mktemp("pattern")
    text = root / "pattern.txt"
    text.write_text(f"{PATTERN}\n" * 2000)
    runs = {}
    for objective, steps in (("mdm", 150), ("arm", 60)):
        runs[objective] = root / objective
        run_mdm(
            [
                "train",
                QUICKSTART,
                *PATTERN_MODEL,
                f"model.objective={objective}",
                f"train.max_steps={steps}",
                f"data.text_file={text}",
                f"train.output_dir={runs[objective]}",
            ]
        )
    return runs


def pattern_continuation(prompt: str, tokenizer, length: int) -> list[int]:
    """The ids that follow `prompt` in the training stream (prompt = a prefix of PATTERN)."""
    period = tokenizer.encode(PATTERN) + [tokenizer.eos_id]
    start = len(tokenizer.encode(prompt))
    return [period[(start + i) % len(period)] for i in range(length)]


@pytest.mark.slow
def test_tiny_mdm_learns_a_pattern_and_llada_and_fast_continue_it(pattern_runs):
    import torch

    from megatron_mdm.diffusion.fast_sampling import fast_sample
    from megatron_mdm.diffusion.sampling import llada_sample
    from megatron_mdm.inference.loading import from_training_checkpoint_torch

    losses = [r["loss"] for r in read_metrics(pattern_runs["mdm"])]
    assert losses[0] > 2.0 and sum(losses[-3:]) / 3 < 0.5, losses  # it was really learned
    model = from_training_checkpoint_torch(pattern_runs["mdm"])
    prompt = torch.tensor([model.tokenizer.encode("abcde")])
    want = pattern_continuation("abcde", model.tokenizer, 16)
    cached = model.cached_model
    samples = {
        "llada": llada_sample(model.model_fn, prompt, model.mask_id, 16, 16, 8),
        "fast-dual-0.9": fast_sample(
            None,
            prompt,
            model.mask_id,
            16,
            16,
            8,
            threshold=0.9,
            cache="dual",
            cached_model=cached,
        ),
        "fast-prefix": fast_sample(
            None, prompt, model.mask_id, 16, 16, 8, cache="prefix", cached_model=cached
        ),
    }
    for name, out in samples.items():
        got = out[0, prompt.shape[1] :].tolist()
        # the first block exactly; a slip or two later on is a weak model, not a broken sampler
        assert got[:8] == want[:8], (name, got, want)
        assert sum(a == b for a, b in zip(got, want)) >= 14, (name, got, want)


def generated_lines(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("[")]


@pytest.mark.slow
def test_generate_fast_sampler_from_checkpoint(pattern_runs):
    proc = run_cli(
        "generate",
        "--ckpt",
        str(pattern_runs["mdm"]),
        "--prompt",
        "abcde",
        "--gen-length",
        "16",
        "--steps",
        "16",
        "--block-length",
        "8",
        "--sampler",
        "fast",
        "--cache",
        "dual",
        "--threshold",
        "0.9",
        timeout=300,
    )
    assert generated_lines(proc) == ["[0] abcdefghijkl"]  # completion cut at the EOS


@pytest.mark.slow
def test_arm_checkpoint_kv_cache_and_megatron_forward_agree(pattern_runs):
    """`--sampler arm` (the default for an ARM checkpoint) decodes with the plain-torch model
    and its KV cache; `--cache none` runs megatron-core's full forward pass per token."""
    outputs = []
    for cache in (["--cache", "dual"], ["--cache", "none"]):
        proc = run_cli(
            "generate",
            "--ckpt",
            str(pattern_runs["arm"]),
            "--prompt",
            "cdef",
            "--gen-length",
            "24",
            "--temperature",
            "0.7",
            "--num-samples",
            "2",
            *cache,
            timeout=300,
        )
        outputs.append(generated_lines(proc))
    assert outputs[0] == outputs[1] == ["[0] cdefghijkl", "[1] cdefghijkl"]


@pytest.mark.slow
def test_interactive_chat_answers_each_line_until_quit(pattern_runs):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mdm.cli",
            "generate",
            "--ckpt",
            str(pattern_runs["mdm"]),
            "--interactive",
            "--gen-length",
            "8",
            "--steps",
            "8",
        ],
        input="abc\nhello\n/quit\nnever answered\n",
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # stdout holds the answers only (DeepSpeed's op-build chatter goes to stderr)
    assert len(proc.stdout.splitlines()) == 2, proc.stdout


# ------------------------------------------------------------------ no model needed


def test_chat_loop_keeps_the_history_and_stops_at_quit():
    import io

    from megatron_mdm.data.sft import ChatTemplate
    from megatron_mdm.inference.commands import chat_loop

    prompts = []

    def answer(prompt):
        prompts.append(prompt)
        return f"answer {len(prompts)}"

    out = io.StringIO()
    count = chat_loop(
        ["hi\n", "\n", "more\n", "/quit\n", "unread\n"],
        answer,
        out,
        ChatTemplate().render_prompt,
    )
    assert count == 2 and out.getvalue() == "answer 1\nanswer 2\n"
    assert prompts == [
        "<|user|>\nhi\n<|assistant|>\n",
        "<|user|>\nhi\n<|assistant|>\nanswer 1\n<|user|>\nmore\n<|assistant|>\n",
    ]


def test_chat_loop_drops_the_oldest_exchanges_that_do_not_fit():
    import io

    from megatron_mdm.data.sft import ChatTemplate
    from megatron_mdm.inference.commands import chat_loop

    prompts = []
    chat_loop(
        ["one\n", "two\n", "three\n"],
        lambda prompt: prompts.append(prompt) or "ok",
        io.StringIO(),
        ChatTemplate().render_prompt,
        fits=lambda prompt: prompt.count("<|user|>") <= 2,
    )
    assert "one" in prompts[1] and "one" not in prompts[2] and "two" in prompts[2]


@pytest.mark.parametrize(
    "requested,objective,expected",
    [(None, "mdm", "llada"), (None, "arm", "arm"), ("fast", "mdm", "fast"), ("arm", "arm", "arm")],
)
def test_sampler_default_follows_the_objective(requested, objective, expected):
    from megatron_mdm.inference.sampling_config import pick_sampler

    assert pick_sampler(requested, objective) == expected


@pytest.mark.parametrize("requested,objective", [("llada", "arm"), ("fast", "arm"), ("arm", "mdm")])
def test_sampler_of_the_wrong_kind_is_refused(requested, objective):
    from megatron_mdm.inference.sampling_config import pick_sampler

    with pytest.raises(ValueError, match=f"--sampler {requested} needs"):
        pick_sampler(requested, objective)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hf", "{tmp}"], "--prompt is required"),
        (["--ckpt", "{tmp}", "--prompt", "x"], "not a checkpoint"),
        (["--hf", "{tmp}", "--prompt", "x"], "not an exported folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    from megatron_mdm.cli import main

    assert main(["generate", *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mdm generate: error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("sampler,objective", [("fast", "mdm"), ("arm", "arm")])
def test_cached_sampler_without_a_cache_is_one_error(sampler, objective):
    """A model that offers no key/value cache: its cached modes are refused with one
    SamplingError (which `mdm` prints as one line); cache=none samples as usual."""
    import torch

    from megatron_mdm.data.tokenizers import ByteLevelTokenizer
    from megatron_mdm.inference.generate import generate
    from megatron_mdm.inference.loading import InferenceModel
    from megatron_mdm.inference.sampling_config import SamplingConfig, SamplingError

    vocab, mask_id, eos_id = 8, 7, 6

    def model_fn(ids: torch.Tensor) -> torch.Tensor:  # always predicts token 3
        logits = torch.zeros(*ids.shape, vocab)
        logits[..., 3] = 1.0
        logits[..., mask_id] = -torch.inf
        return logits

    model = InferenceModel(
        model_fn, ByteLevelTokenizer(), mask_id, eos_id, objective, torch.device("cpu")
    )
    assert model.cached_model is None
    prompt = torch.tensor([[1, 2]])
    config = SamplingConfig(sampler=sampler, gen_length=4, steps=4, cache="dual")
    with pytest.raises(SamplingError, match="no key/value cache"):
        generate(model, prompt, config)
    out = generate(model, prompt, config.replace(cache="none", threshold=None))
    assert out.tolist() == [[1, 2, 3, 3, 3, 3]]
