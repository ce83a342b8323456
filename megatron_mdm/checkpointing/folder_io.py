"""Exported folders: safetensors (sharded with an index above a size), JSON files, tokenizer
files, all written under a temporary name and renamed into place.

Sharding uses huggingface_hub's `split_torch_state_dict_into_shards`, so the file names and
`model.safetensors.index.json` are exactly what `transformers` and other readers expect.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from megatron_mdm.checkpointing.tokenizer_files import write_auto_tokenizer
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.utils import MDMError, atomic_directory

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_INFO = "mdm_tokenizer.json"


class FolderError(MDMError):
    """One line naming the file at fault."""


def atomic_folder(out_dir: str | Path):
    """A staging folder beside `out_dir`, renamed to `out_dir` only on success."""
    return atomic_directory(out_dir, exists_error=FolderError)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FolderError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise FolderError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def save_safetensors(folder: Path, tensors: dict, max_shard_size: int | str, progress=None) -> int:
    """Write `tensors` as one `model.safetensors` or as shards + index; returns bytes written."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    total = 0
    for filename, names in split.filename_to_tensors.items():
        shard = {name: tensors[name].contiguous() for name in names}
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        if progress is not None:
            progress.update(len(names))
    if split.is_sharded:
        index = {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
        write_json(folder / INDEX, index)
    return total


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder (single file or indexed shards); safetensors never unpickle."""
    folder = Path(folder)
    if (folder / INDEX).exists():
        files = sorted(set(read_json(folder / INDEX)["weight_map"].values()))
    elif (folder / SINGLE).exists():
        files = [SINGLE]
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        if not found:
            raise FolderError(f"{folder}: no model.safetensors (or index) found")
        files = found
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise FolderError(f"{path}: missing shard")
        try:
            tensors.update(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise FolderError(f"{path}: not a safetensors file ({exc})") from None
    return tensors


def write_tokenizer(folder: Path, tokenizer_meta: dict, mask_id: int | None = None) -> None:
    """Copy the tokenizer's files and describe it in `mdm_tokenizer.json` for our loaders; add
    what `AutoTokenizer.from_pretrained(folder)` needs (`tokenizer_files.py`; the byte
    tokenizer's `[MASK]` at `mask_id`).

    Contents only (`copyfile`): the copies get the permissions of any new file under the
    caller's umask, not the source's (a 0600 file in someone's cache must not lock colleagues
    out of an export)."""
    tok = build_tokenizer(tokenizer_meta["type"], tokenizer_meta.get("model"))
    copied = []
    for src in tok.files():
        shutil.copyfile(src, folder / Path(src).name)
        copied.append(Path(src).name)
    model = None
    if tokenizer_meta["type"] == "sentencepiece" and copied:
        model = copied[0]
    elif tokenizer_meta["type"] == "hf" and copied:
        model = "." if Path(tokenizer_meta["model"]).is_dir() else copied[0]
    write_json(folder / TOKENIZER_INFO, {"type": tokenizer_meta["type"], "model": model})
    write_auto_tokenizer(folder, tok, mask_id)


def read_tokenizer(folder: Path) -> dict:
    """{"type", "model" (absolute path or None)} of an exported folder."""
    info = read_json(Path(folder) / TOKENIZER_INFO)
    model = info.get("model")
    if model is not None:
        model = str((Path(folder) / model).resolve())
    return {"type": info["type"], "model": model}
