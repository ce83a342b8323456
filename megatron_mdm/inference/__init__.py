"""A trained model to sample from: loading (`--ckpt` / `--hf`), `SamplingConfig`, `generate`,
and `mdm generate` (docs/design.md §6)."""
