"""Data pipeline throughput on this machine: preprocessing and the training loader with masking.

Reports tokens/s of `mdm preprocess` (byte and sentencepiece tokenizers, 1 and 2 workers), of the
start-up dataset check (`data.validate: full`, every token id; `sample` reads at most 64 MiB of a
.bin, so its cost is capped near that of 32 M uint16 tokens here) and of
building masked micro-batches from megatron-core GPTDatasets (the work the training loop does per
step), beside the tokens/s one GPU step consumes for the SMDM 1028M config, derived from its
FLOPs per token at a stated MFU (not measured here), to show whether the loader can keep up.

    python bench/data_pipeline.py [--documents 20000] [--seq-length 2048] [--micro-batch 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from megatron_mdm.config import ModelConfig, load_config
from megatron_mdm.data.batches import build_micro_batch, micro_batch_positions
from megatron_mdm.data.indexed_check import check_indexed_dataset
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.pretrain_dataset import build_sample_sources
from megatron_mdm.data.sentencepiece_training import train_sentencepiece
from megatron_mdm.data.synthetic_corpus import write_corpus
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.model.accounting import flops_per_token

H100_BF16_PEAK = 989e12


def gpu_tokens_per_s(mfu: float) -> float:
    """Tokens/s one H100 consumes training the SMDM 1028M MDM (20/1792/14, seq 2048, 32k vocab)."""
    m = ModelConfig(num_layers=20, hidden_size=1792, num_attention_heads=14, seq_length=2048)
    return mfu * H100_BF16_PEAK / flops_per_token(m, padded_vocab=32128)


def time_preprocess(corpus: Path, out: Path, tokenizer, workers: int) -> dict:
    summary = preprocess([str(corpus)], str(out), tokenizer, workers=workers, progress=False)
    return {k: summary[k] for k in ("documents", "tokens", "seconds", "tokens_per_s", "mb_per_s")}


def time_validation(prefix: Path, tokenizer, mode: str, repeats: int = 5) -> dict:
    """Best of `repeats` checks (the files are in the page cache after the first)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        summary = check_indexed_dataset(str(prefix), tokenizer.vocab_size, mode)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {
        "tokens": summary.tokens,
        "sequences": summary.sequences,
        "seconds": best,
        "tokens_per_s": summary.tokens / best,
    }


def time_loader(prefix: Path, cache: Path, tokenizer, seq: int, micro: int, iters: int) -> dict:
    cfg = load_config(
        None,
        [
            f"model.seq_length={seq}",
            f"train.micro_batch_size={micro}",
            f"train.global_batch_size={micro}",
            f"train.max_steps={iters}",
            "data.split=100,0,0",
            "diffusion.var_len_prob=0.01",
        ],
    )
    sources = build_sample_sources(cfg, tokenizer, [str(prefix)], cache)
    positions = micro_batch_positions(0, 0, micro, 1)
    mask_id = tokenizer.vocab_size
    build_micro_batch(cfg, sources["train"], mask_id, 0, 0, positions)  # warm the mmap
    start = time.perf_counter()
    tokens = 0
    for step in range(iters):
        mb = build_micro_batch(cfg, sources["train"], mask_id, step, step * micro, positions)
        tokens += mb.num_tokens
    elapsed = time.perf_counter() - start
    return {
        "micro_batches": iters,
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--mfu", type=float, default=0.5)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_corpus(tmp / "corpus.txt", num_documents=args.documents, seed=0)
        results["corpus_mb"] = corpus.stat().st_size / 1e6
        byte = build_tokenizer("byte", None)
        spm = build_tokenizer(
            "sentencepiece",
            str(train_sentencepiece([str(corpus)], str(tmp / "spm"), vocab_size=512)),
        )
        for name, tok in (("byte", byte), ("sentencepiece", spm)):
            for workers in (1, 2):
                out = tmp / f"{name}_{workers}"
                results[f"preprocess_{name}_w{workers}"] = time_preprocess(
                    corpus, out, tok, workers
                )
        results["validate_full_byte"] = time_validation(tmp / "byte_1", byte, "full")
        results["loader_mdm_masking"] = time_loader(
            tmp / "byte_1", tmp / "cache", byte, args.seq_length, args.micro_batch, args.iters
        )
    results["gpu_step_tokens_per_s_derived"] = {
        "config": "SMDM 1028M (20/1792/14), seq 2048, 1x H100 BF16",
        "mfu": args.mfu,
        "tokens_per_s": gpu_tokens_per_s(args.mfu),
    }
    loader = results["loader_mdm_masking"]["tokens_per_s"]
    results["loader_over_gpu_ratio"] = (
        loader / results["gpu_step_tokens_per_s_derived"]["tokens_per_s"]
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
