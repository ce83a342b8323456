"""Everything that reads or writes model state on disk, shared by training, conversion and
inference: the run directory (`latest`, `meta.yaml`), DeepSpeed checkpoint I/O, the canonical
TP=1/PP=1 state dict, weights-only checkpoints and exported folders (docs/design.md §8)."""
