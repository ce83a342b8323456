"""Export throughput of `mdm convert export` for a ~1B-parameter TP=2 checkpoint.

The checkpoint holds random weights of the SMDM 1028M shape (20 layers, hidden 1792, 14 heads,
FFN 7168, 32k vocab), written at TP=2 through the same writer `mdm convert import` uses, so no
GPU-scale training is needed to measure the converter: read both TP shards, gather, rename to the
target layout, cast, and write safetensors.

    python bench/convert_export.py [--workdir DIR] [--formats hf,llada,smdm] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from megatron_mdm.checkpointing.canonical import write_weights_checkpoint
from megatron_mdm.config import load_config, to_dict
from megatron_mdm.convert import commands
from megatron_mdm.model.vocab import VocabLayout

SMDM_1028M = [
    "model.num_layers=20",
    "model.hidden_size=1792",
    "model.num_attention_heads=14",
    "model.ffn_hidden_size=7168",
    "model.seq_length=2048",
    "parallel.tensor=2",
    "data.tokenizer.type=byte",
]
TOKENIZER_SIZE = 32000


def random_canonical(cfg, vocab: VocabLayout) -> dict:
    m = cfg.model
    hd = m.hidden_size // m.num_attention_heads
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    sd = {
        "embedding.word_embeddings.weight": rand(vocab.padded_size, m.hidden_size),
        "output_layer.weight": rand(vocab.padded_size, m.hidden_size),
        "decoder.final_layernorm.weight": torch.ones(m.hidden_size),
    }
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(m.hidden_size)
        sd[p + "pre_mlp_layernorm.weight"] = torch.ones(m.hidden_size)
        sd[p + "self_attention.linear_qkv.weight"] = rand(
            3 * m.num_attention_heads * hd, m.hidden_size
        )
        sd[p + "self_attention.linear_proj.weight"] = rand(m.hidden_size, m.hidden_size)
        sd[p + "mlp.linear_fc1.weight"] = rand(2 * m.ffn_size, m.hidden_size)
        sd[p + "mlp.linear_fc2.weight"] = rand(m.hidden_size, m.ffn_size)
    return sd


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--formats", default="hf,llada,smdm")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mdm-convert-bench-"))
    cfg = load_config(None, SMDM_1028M)
    vocab = VocabLayout.build(TOKENIZER_SIZE, None, 128, 2)
    canonical = random_canonical(cfg, vocab)
    params = sum(t.numel() for t in canonical.values())
    meta = {
        "step": 0,
        "consumed_samples": 0,
        "config": to_dict(cfg),
        "tokenizer": {"type": "byte", "model": None, "vocab_size": TOKENIZER_SIZE, "eos_id": 257},
        "vocab": {
            "tokenizer_size": TOKENIZER_SIZE,
            "mask_id": vocab.mask_id,
            "padded_size": vocab.padded_size,
        },
    }
    start = time.perf_counter()
    write_weights_checkpoint(canonical, meta, work / "ckpt", tp=2, pp=1)
    write_s = time.perf_counter() - start
    del canonical
    results = {"parameters": params, "checkpoint_write_s": round(write_s, 2), "exports": []}
    for fmt in args.formats.split(","):
        ns = argparse.Namespace(
            ckpt_dir=str(work / "ckpt"),
            out_dir=str(work / f"export-{fmt}"),
            format=fmt,
            dtype=args.dtype,
            fp32_master=False,
            max_shard_size="5GB",
            progress=False,
        )
        results["exports"].append(commands.export(ns))
        shutil.rmtree(work / f"export-{fmt}")
    shutil.rmtree(work)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
