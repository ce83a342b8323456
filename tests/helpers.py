"""Shared test helpers (import them with `from helpers import ...`): paths, the tiny model
overrides, runs of `mdm` as real subprocesses (one process, or several through torchrun on
gloo), metrics readers, the tiny plain-torch `MDMForMaskedLM` builders and a fake Slurm
environment. Fixtures stay in conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

from megatron_mdm.convert.hf_modeling.configuration_mdm import MDMConfig
from megatron_mdm.convert.hf_modeling.modeling_mdm import MDMForMaskedLM

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# A 2-layer GQA model for in-process tests (heads 4, kv groups 2).
TINY_MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.seq_length=16",
]

# A throw-away run: every step logged to metrics.jsonl, no progress bar, no TensorBoard, no resume,
# no final checkpoint.
SCRATCH_RUN = [
    "logging.interval=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.resume=none",
    "checkpoint.save_at_end=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    env["MASTER_ADDR"] = "127.0.0.1"
    env["MASTER_PORT"] = str(free_port())
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_mdm(args: list[str], nproc: int = 1, timeout: int = 600, check: bool = True):
    """Run `mdm ARGS` on `nproc` processes (torchrun when > 1); returns the CompletedProcess.

    A free port can be taken by another process (gloo's own connections, a parallel test)
    between `free_port()` and the rendezvous binding it: such a start is retried on a new port."""
    for _ in range(3):
        proc = _run_mdm_once(args, nproc, timeout)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mdm {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-6000:]}"
        )
    return proc


def _run_mdm_once(args: list[str], nproc: int, timeout: int):
    env = subprocess_env()
    if nproc == 1:
        cmd = [sys.executable, "-m", "megatron_mdm.cli", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            env["MASTER_PORT"],
            "-m",
            "megatron_mdm.cli",
            *args,
        ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_convert(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`mdm convert ARGS --no-progress`; asserts exit 0 unless `check=False`.

    A call expected to succeed runs in this process (`cli.main`, stdout and stderr captured):
    what it is checked for is the files it writes, and a fresh interpreter would only add ~2 s
    of imports to each of the suite's ~20 such calls. A call expected to fail (`check=False`)
    runs as a real subprocess: its exit status and its one line of stderr, nothing else, are
    what those tests check."""
    argv = ["convert", *args, "--no-progress"]
    if not check:
        return subprocess.run(
            [sys.executable, "-m", "megatron_mdm.cli", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    from megatron_mdm import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = cli.main(argv)
    proc = subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    """`mdm ARGS` in a subprocess, output captured, exit code left to the caller."""
    return subprocess.run(
        [sys.executable, "-m", "megatron_mdm.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_all_metrics(output_dir: Path) -> list[dict]:
    with open(Path(output_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(output_dir: Path) -> list[dict]:
    """Training records (validation records carry `val_loss` instead of `loss`)."""
    return [r for r in read_all_metrics(output_dir) if "loss" in r]


def read_val_metrics(output_dir: Path) -> list[dict]:
    return [r for r in read_all_metrics(output_dir) if "val_loss" in r]


# The tiny plain-torch model of the exported modeling code (36 tokenizer ids + [MASK]).
TORCH_VOCAB = 37  # 36 tokenizer ids + [MASK]
TORCH_MASK = 36


def tiny_config(objective="mdm", kv_heads=4, **kw) -> MDMConfig:
    args = dict(
        vocab_size=TORCH_VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        rope_theta=10000.0,
        mask_token_id=TORCH_MASK,
        eos_token_id=1,
        objective=objective,
        initializer_range=0.2,
    )
    args.update(kw)
    return MDMConfig(**args)


def tiny_model(config: MDMConfig, seed: int = 0) -> MDMForMaskedLM:
    torch.manual_seed(seed)
    model = MDMForMaskedLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so that the check sees them
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


# A fake Slurm environment.
SLURM_JOB_ID = 4242123


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def fake_slurm(tmp_path: Path, hosts=("node001", "node002"), **extra) -> dict:
    """Environment of a batch script on node SLURM_NODEID of a 2-node job, with a stub scontrol
    that records its arguments and expands any node list to `hosts`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol.calls"
    listing = "\n".join(hosts)
    write_executable(
        bin_dir / "scontrol",
        f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(calls))}
case "$1 $2" in
    "show hostnames") printf '%s\\n' {shlex.quote(listing)} ;;
    requeue\\ *) ;;
    *) echo "stub scontrol: unsupported: $*" >&2; exit 1 ;;
esac
""",
    )
    env = {k: v for k, v in subprocess_env().items() if not k.startswith(("SLURM_", "MDM_"))}
    env.pop("GPUS_PER_NODE", None)
    env.pop("VENV", None)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID=str(SLURM_JOB_ID),
        SLURM_JOB_NAME="mdm-pretrain",
        SLURM_JOB_NODELIST="node[001-002]",
        SLURM_NODELIST="node[001-002]",
        SLURM_NNODES="2",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NODEID="1",
        SLURM_PROCID="0",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_CPUS_PER_TASK="16",
        SLURM_GPUS_ON_NODE="4",
        SLURM_SUBMIT_DIR=str(ROOT),
        # Left over from a local run in the submitting shell: must not leak into the launch.
        MASTER_ADDR="10.9.9.9",
        MASTER_PORT="1234",
    )
    env.update(extra)
    return env


# --- tiny Hugging Face causal LMs (test_causal_import.py, test_causal_init_from.py)

CAUSAL_ROWS = 128  # embedding rows of the tiny models; the tokenizer holds fewer ids (unused rows)
CAUSAL_SHAPE = dict(
    vocab_size=CAUSAL_ROWS,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)
WORDS = "the old king slept while a red fox ran over the hill and the moon rose".split()


def save_causal_tokenizer(folder):
    """A small BPE built with `tokenizers`, saved by transformers: ~100 ids, EOS, PAD and one
    reserved added token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<unk>", "<|endoftext|>", "<pad>", "<|reserved_0|>"]
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=specials, show_progress=False)
    gen = torch.Generator().manual_seed(0)
    corpus = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=gen).tolist())
        for _ in range(200)
    ]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|reserved_0|>"],
    )
    fast.save_pretrained(str(folder))
    return fast


def tiny_causal_lm(kind: str, folder, tied: bool = False, **extra):
    """A random Llama / Mistral / Qwen2 causal LM (random norms and biases too), saved with its
    tokenizer by `save_pretrained` into `folder`; returns the transformers model."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[kind]
    tok = save_causal_tokenizer(folder)
    config = config_cls(
        **CAUSAL_SHAPE,
        tie_word_embeddings=tied,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        **extra,
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # random norms and biases too, so their mapping is tested
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1)
    model.save_pretrained(str(folder))
    return model
