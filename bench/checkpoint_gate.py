"""Cost of the checkpoint gate (`checkpointing.safe_load.check_checkpoint`) next to a full read.

Every reader proves each `.pt` file of a checkpoint loads with `torch.load(weights_only=True)`
before it (or DeepSpeed's loader) reads the tensors. With `mmap=True` only the pickle is parsed,
so the gate should cost a small fraction of the read it guards. This writes a TP=2 weights-only
checkpoint of random weights of SMDM 1028M's width (8 layers; cf. `bench/convert_export.py`),
then times the gate alone and the full gather into the canonical state dict (`load_canonical`,
gate included), each on a warm page cache.

    python bench/checkpoint_gate.py [--workdir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from megatron_mdm.checkpointing.canonical import load_canonical, write_weights_checkpoint
from megatron_mdm.checkpointing.run_dir import find_checkpoint
from megatron_mdm.checkpointing.safe_load import check_checkpoint
from megatron_mdm.config import load_config, to_dict
from megatron_mdm.convert import layouts
from megatron_mdm.model.vocab import VocabLayout

# SMDM 1028M's width with 8 of its 20 layers (~0.5B parameters, 2 GB in fp32): enough files and
# bytes for the ratio, within this machine's memory while the canonical dict is gathered.
SMDM_1028M_8_LAYERS = [
    "model.num_layers=8",
    "model.hidden_size=1792",
    "model.num_attention_heads=14",
    "model.ffn_hidden_size=7168",
    "parallel.tensor=2",
    "data.tokenizer.type=byte",
]
TOKENIZER_SIZE = 32000


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mdm-gate-bench-"))
    cfg = load_config(None, SMDM_1028M_8_LAYERS)
    vocab = VocabLayout.build(TOKENIZER_SIZE, None, 128, 2)
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    gen = torch.Generator().manual_seed(0)
    canonical = {
        name: torch.randn(*dims, generator=gen) * 0.02
        for name, dims in layouts.canonical_shapes(shape, vocab.padded_size).items()
    }
    meta = {
        "step": 0,
        "config": to_dict(cfg),
        "vocab": {
            "tokenizer_size": TOKENIZER_SIZE,
            "mask_id": vocab.mask_id,
            "padded_size": vocab.padded_size,
        },
    }
    write_weights_checkpoint(canonical, meta, work / "ckpt", tp=2, pp=1)
    del canonical
    ckpt = find_checkpoint(work / "ckpt")
    files = sorted(ckpt.glob("*.pt"))
    size = sum(f.stat().st_size for f in files)
    load_canonical(ckpt)  # warm the page cache
    gate = best_of(args.repeats, lambda: check_checkpoint(ckpt))
    read = best_of(args.repeats, lambda: load_canonical(ckpt))
    shutil.rmtree(work)
    print(
        json.dumps(
            {
                "checkpoint_bytes": size,
                "files": len(files),
                "gate_s": round(gate, 4),
                "load_canonical_s": round(read, 3),
                "gate_fraction": round(gate / read, 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
