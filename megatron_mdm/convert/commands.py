"""`mdm convert export | import | reshard`: training checkpoints <-> exported folders.

    export  CKPT_DIR OUT_DIR --format hf|llada|smdm|llama [--dtype bf16|fp32] [--fp32-master]
    import  SRC_DIR OUT_CKPT_DIR --format hf|llada|smdm|llama --tensor N --pipeline M
            [--mask-id N]  (llama: a Llama/Mistral/Qwen2 folder or hub id; checkpointing/
            causal_import.py)
    reshard CKPT_DIR OUT_CKPT_DIR --tensor N --pipeline M [--fp32-master] [--weights-only]

Every command works on the canonical (TP=1, PP=1) state dict: read -> canonical -> write.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_mdm.checkpointing import folder_io
from megatron_mdm.checkpointing.adam_state import has_adam_state, load_adam_state
from megatron_mdm.checkpointing.canonical import (
    check_canonical_shapes,
    load_canonical,
    write_weights_checkpoint,
)
from megatron_mdm.checkpointing.causal_import import (
    causal_canonical,
    check_mask_id,
    load_causal_tokenizer,
)
from megatron_mdm.checkpointing.run_dir import (
    CheckpointError,
    find_checkpoint,
    read_meta,
    vocab_from_meta,
)
from megatron_mdm.config import from_dict, to_dict
from megatron_mdm.convert import layouts
from megatron_mdm.convert.causal_lm import read_causal_lm, resolve_source
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.inference.sampling_config import SamplingConfig, pick_sampler
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.utils import MDMError

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def generation_defaults(objective: str, block_size: int | None = None) -> dict:
    """`generation_config.json`'s sampler settings: `SamplingConfig`'s defaults, resolved (a
    block diffusion model's block length is its block size)."""
    c = SamplingConfig()
    return {
        "sampler": pick_sampler(c.sampler, objective),
        "gen_length": c.gen_length,
        "steps": c.steps,
        "block_length": block_size or c.blocks,
        "temperature": c.temperature,
        "remasking": c.remasking,
        "cfg": c.cfg,
    }


def export(args) -> dict:
    start = time.perf_counter()
    canonical, meta, ckpt = load_canonical(args.ckpt_dir, fp32_master=args.fp32_master)
    cfg = from_dict(meta["config"], source=str(ckpt))
    vocab = vocab_from_meta(meta)
    canonical = layouts.canonicalize_names(canonical)
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    check_canonical_shapes(canonical, shape, vocab.padded_size, str(ckpt))
    layout = layouts.LAYOUTS[args.format]
    dtype = args.dtype or ("fp32" if cfg.train.precision == "fp32" else "bf16")
    export_shape = shape
    if not layout.keeps_mask_row:  # a causal LM: the tokenizer's rows only
        export_shape = dataclasses.replace(shape, n_vocab=vocab.tokenizer_size)
    tensors = {k: v.to(DTYPES[dtype]) for k, v in layout.export(canonical, export_shape).items()}
    with folder_io.atomic_folder(args.out_dir) as staging:
        with tqdm(total=len(tensors), desc="export", disable=not args.progress) as bar:
            nbytes = folder_io.save_safetensors(staging, tensors, args.max_shard_size, bar)
        tok = meta["tokenizer"]
        config = layout.config_json(
            export_shape,
            layouts.config_meta(
                cfg,
                vocab,
                eos_token_id=tok["eos_id"],
                torch_dtype="bfloat16" if dtype == "bf16" else "float32",
            ),
        )
        folder_io.write_json(staging / "config.json", config)
        mask_id = vocab.mask_id if vocab.mask_id < export_shape.n_vocab else None
        folder_io.write_tokenizer(staging, meta["tokenizer"], mask_id=mask_id)
        folder_io.write_json(
            staging / "generation_config.json",
            {
                **generation_defaults(cfg.model.objective, cfg.diffusion.block_size),
                "mask_token_id": vocab.mask_id,
                "eos_token_id": meta["tokenizer"]["eos_id"],
                "objective": cfg.model.objective,
            },
        )
        for path in layout.code_files:  # only what config.json's auto_map names
            shutil.copyfile(path, staging / path.name)  # the umask's mode, not the source's
    summary = _summary("export", len(tensors), nbytes, start, args.out_dir)
    summary["kept"] = f"dtype {dtype}"
    return summary


# config.json key -> model config key, per format (n_vocab and mask id handled separately).
CONFIG_KEYS = {
    "hf": {
        "num_hidden_layers": "num_layers",
        "hidden_size": "hidden_size",
        "num_attention_heads": "num_attention_heads",
        "num_key_value_heads": "num_query_groups",
        "intermediate_size": "ffn_hidden_size",
        "max_position_embeddings": "seq_length",
        "rope_theta": "rotary_base",
        "rms_norm_eps": "norm_epsilon",
        "objective": "objective",
    },
    "llada": {
        "n_layers": "num_layers",
        "d_model": "hidden_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_query_groups",
        "mlp_hidden_size": "ffn_hidden_size",
        "max_sequence_length": "seq_length",
        "rope_theta": "rotary_base",
        "rms_norm_eps": "norm_epsilon",
    },
    "smdm": {
        "n_layer": "num_layers",
        "n_embd": "hidden_size",
        "n_head": "num_attention_heads",
        "n_query_groups": "num_query_groups",
        "intermediate_size": "ffn_hidden_size",
        "block_size": "seq_length",
        "norm_eps": "norm_epsilon",
    },
}
VOCAB_KEY = {"hf": "vocab_size", "llada": "embedding_size", "smdm": "padded_vocab_size"}


def _config_value(config: dict, key: str, where: Path):
    if key not in config:
        raise folder_io.FolderError(f"{where}: missing key {key}")
    return config[key]


def _experiment_for_import(fmt: str, src: Path):
    """(meta, vocab, shape) of an exported folder, from its config.json and tokenizer."""
    where = src / "config.json"
    config = folder_io.read_json(where)
    model = {
        ours: _config_value(config, theirs, where) for theirs, ours in CONFIG_KEYS[fmt].items()
    }
    model["rotary_base"] = int(model.get("rotary_base", 10000))
    n_vocab = int(_config_value(config, VOCAB_KEY[fmt], where))
    mask_default = config.get("vocab_size") if fmt == "smdm" else None
    model["mask_token_id"] = config.get("mask_token_id", mask_default)
    tokenizer = folder_io.read_tokenizer(src)
    sections = {"model": model, "data": {"tokenizer": tokenizer}}
    if model.get("objective") == "block":  # an hf export of a block diffusion model
        sections["diffusion"] = {"block_size": _config_value(config, "block_size", where)}
    cfg = from_dict(sections, source=str(where))
    tok = build_tokenizer(tokenizer["type"], tokenizer.get("model"))
    vocab = VocabLayout.build(
        tok.vocab_size, cfg.model.mask_token_id, cfg.model.make_vocab_size_divisible_by, 1
    )
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    if shape.n_vocab != n_vocab:
        raise CheckpointError(
            f"{where}: {VOCAB_KEY[fmt]}={n_vocab}, but the tokenizer ({tok.vocab_size} ids) and "
            f"mask id {vocab.mask_id} give {shape.n_vocab} rows"
        )
    meta = {
        "step": 0,
        "consumed_samples": 0,
        "config": to_dict(cfg),
        "tokenizer": {
            "type": tok.name,
            "model": tokenizer.get("model"),
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
        },
        "vocab": {
            "tokenizer_size": vocab.tokenizer_size,
            "mask_id": vocab.mask_id,
            "padded_size": vocab.padded_size,
        },
    }
    return meta, vocab, shape


def import_(args) -> dict:
    if args.format == "llama":
        return _import_causal(args)
    if args.mask_id is not None:
        raise folder_io.FolderError(
            "--mask-id: only for --format llama (the other formats carry one)"
        )
    start = time.perf_counter()
    src = Path(args.src_dir)
    if not src.is_dir():
        raise folder_io.FolderError(f"{src}: not a folder")
    meta, vocab, shape = _experiment_for_import(args.format, src)
    tensors = folder_io.load_safetensors(src)
    canonical = layouts.LAYOUTS[args.format].import_(tensors, shape, vocab.padded_size)
    canonical = {k: v.float() for k, v in canonical.items()}  # training checkpoints are fp32
    check_canonical_shapes(canonical, shape, vocab.padded_size, str(src))
    out = Path(args.out_ckpt_dir)
    meta["tokenizer"]["model"] = _relocated_tokenizer_model(meta["tokenizer"], src, out)
    meta["config"]["data"]["tokenizer"]["model"] = meta["tokenizer"]["model"]

    def copy_tokenizer(staging: Path) -> None:
        (staging / "tokenizer").mkdir()
        folder_io.write_tokenizer(staging / "tokenizer", folder_io.read_tokenizer(src))

    with tqdm(total=args.tensor * args.pipeline, desc="import", disable=not args.progress) as bar:
        write_weights_checkpoint(
            canonical, meta, out, args.tensor, args.pipeline, bar, populate=copy_tokenizer
        )
    nbytes = sum(t.numel() * t.element_size() for t in canonical.values())
    return _summary("import", len(canonical), nbytes, start, args.out_ckpt_dir)


def _import_causal(args) -> dict:
    """A Llama / Mistral / Qwen2 folder (or hub id) -> a weights-only checkpoint of a causal
    model (objective arm) with the folder's tokenizer and a [MASK] id (causal_import.py)."""
    start = time.perf_counter()
    src = resolve_source(args.src_dir, "import")
    lm = read_causal_lm(src)
    tok = load_causal_tokenizer(lm)
    rows = lm.settings["vocab_size"]
    mask_id = check_mask_id(args.mask_id, rows, tok, "--mask-id")
    out = Path(args.out_ckpt_dir).resolve()
    model = {**lm.settings, "mask_token_id": mask_id, "seq_length": lm.max_positions}
    tok_section = {"type": "hf", "model": str(out / "tokenizer")}
    cfg = from_dict(
        {"model": {**model, "objective": "arm"}, "data": {"tokenizer": tok_section}},
        source=str(src / "config.json"),
    )
    vocab = VocabLayout.build(rows, mask_id, cfg.model.make_vocab_size_divisible_by, 1)
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    canonical = causal_canonical(src, shape, vocab.padded_size, mask_id)
    check_canonical_shapes(canonical, shape, vocab.padded_size, str(src))
    meta = {
        "step": 0,
        "consumed_samples": 0,
        "config": to_dict(cfg),
        "tokenizer": {**tok_section, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "vocab": {"tokenizer_size": rows, "mask_id": mask_id, "padded_size": vocab.padded_size},
    }

    def copy_tokenizer(staging: Path) -> None:
        (staging / "tokenizer").mkdir()
        folder_io.write_tokenizer(staging / "tokenizer", {"type": "hf", "model": str(src)})

    with tqdm(total=args.tensor * args.pipeline, desc="import", disable=not args.progress) as bar:
        write_weights_checkpoint(
            canonical, meta, out, args.tensor, args.pipeline, bar, populate=copy_tokenizer
        )
    nbytes = sum(t.numel() * t.element_size() for t in canonical.values())
    summary = _summary("import", len(canonical), nbytes, start, args.out_ckpt_dir)
    notes = [f"{lm.model_type}, [MASK] = {mask_id}" + (" (new row)" if mask_id == rows else "")]
    if lm.tied:
        notes.append("tied embeddings untied")
    summary["kept"] = "; ".join(notes)
    return summary


def _relocated_tokenizer_model(tokenizer: dict, src: Path, out: Path) -> str | None:
    """Where the tokenizer's model file will be once copied into `<out>/tokenizer/`."""
    model = tokenizer.get("model")
    if model is None:
        return None
    rel = Path(model).resolve().relative_to(src.resolve())
    return str((out / "tokenizer" / rel).resolve())


def reshard(args) -> dict:
    """Weights, and Adam's state when the source holds a readable one (unless --weights-only),
    to another TP/PP layout (docs/design.md §8)."""
    start = time.perf_counter()
    adam = None
    source_meta = read_meta(find_checkpoint(args.ckpt_dir))
    if not args.weights_only and has_adam_state(source_meta):
        adam, meta, _ = load_adam_state(args.ckpt_dir)
        canonical = adam.master
    else:
        canonical, meta, _ = load_canonical(args.ckpt_dir, fp32_master=args.fp32_master)
    with tqdm(total=args.tensor * args.pipeline, desc="reshard", disable=not args.progress) as bar:
        write_weights_checkpoint(
            canonical, meta, args.out_ckpt_dir, args.tensor, args.pipeline, bar, adam=adam
        )
    nbytes = sum(t.numel() * t.element_size() for t in canonical.values())
    summary = _summary("reshard", len(canonical), nbytes, start, args.out_ckpt_dir)
    summary["kept"] = "weights and Adam state" if adam is not None else "weights only"
    return summary


def _summary(what: str, tensors: int, nbytes: int, start: float, out) -> dict:
    seconds = time.perf_counter() - start
    return {
        "command": what,
        "output": str(out),
        "tensors": tensors,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "gb_per_s": round(nbytes / 1e9 / max(seconds, 1e-9), 3),
    }


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", required=True)
    ex = sub.add_parser("export", help="training checkpoint -> hf / llada / smdm folder")
    ex.add_argument("ckpt_dir", help="an output_dir of `mdm train`, or one checkpoint in it")
    ex.add_argument("out_dir")
    ex.add_argument("--format", choices=sorted(layouts.LAYOUTS), required=True)
    ex.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: the training precision"
    )
    ex.add_argument("--fp32-master", action="store_true", help="weights from ZeRO fp32 shards")
    ex.add_argument("--max-shard-size", default="5GB", help="shard safetensors above this size")
    im = sub.add_parser("import", help="hf / llada / smdm folder -> training checkpoint")
    im.add_argument("src_dir")
    im.add_argument("out_ckpt_dir")
    im.add_argument("--format", choices=sorted(layouts.LAYOUTS), required=True)
    im.add_argument(
        "--mask-id",
        type=int,
        default=None,
        help="llama: the [MASK] id, a reserved token or unused row (default: a new row)",
    )
    rs = sub.add_parser("reshard", help="training checkpoint -> another TP/PP layout")
    rs.add_argument("ckpt_dir")
    rs.add_argument("out_ckpt_dir")
    rs.add_argument("--fp32-master", action="store_true", help="weights from ZeRO fp32 shards")
    rs.add_argument(
        "--weights-only",
        action="store_true",
        help="leave Adam's state behind (resuming then starts a fresh optimizer)",
    )
    for p in (im, rs):
        p.add_argument("--tensor", type=int, default=1)
        p.add_argument("--pipeline", type=int, default=1)
    for p in (ex, im, rs):
        p.add_argument("--no-progress", dest="progress", action="store_false")


def run_convert_args(args) -> int:
    commands = {"export": export, "import": import_, "reshard": reshard}
    try:
        summary = commands[args.convert_command](args)
    except MDMError as exc:
        print(f"mdm convert {args.convert_command}: error: {exc}", file=sys.stderr)
        return 2
    kept = f" ({summary['kept']})" if "kept" in summary else ""
    print(
        f"{summary['command']}: {summary['tensors']} tensors, {summary['bytes'] / 1e6:,.1f} MB "
        f"in {summary['seconds']:.2f} s ({summary['gb_per_s']:.3f} GB/s) -> {summary['output']}"
        f"{kept}"
    )
    return 0
