"""Reading and writing whole experiment configs: YAML files, dicts, command-line overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import yaml

from megatron_mdm.config.checks import ConfigError, short
from megatron_mdm.config.coerce import apply_override, build, read_yaml
from megatron_mdm.config.schema import ExperimentConfig
from megatron_mdm.utils import atomic_write_text

__all__ = ["dump_yaml", "from_dict", "load_config", "to_dict"]


def from_dict(d: dict, source: str = "<dict>") -> ExperimentConfig:
    """Build and validate a config from a nested dict (e.g. one saved in a checkpoint)."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping of sections, got {short(d)}", source=source)
    cfg = build(ExperimentConfig, d, "", source)
    cfg.source = source
    cfg.explicit = frozenset(_dotted_keys(d))
    cfg.validate()
    return cfg


def load_config(path: str | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read ``path`` (None: all defaults), apply ``section.key=value`` overrides, validate."""
    source = "<defaults>" if path is None else str(path)
    data = {} if path is None else read_yaml(source)
    cfg = build(ExperimentConfig, data, "", source)
    cfg.source = source
    explicit = set(_dotted_keys(data))
    for override in overrides:
        apply_override(cfg, override, source)
        explicit.add(override.partition("=")[0].strip())
    cfg.explicit = frozenset(explicit)
    cfg.validate()
    return cfg


def _dotted_keys(data: dict, prefix: str = ""):
    """Every leaf key of a nested mapping, dotted (`model.hidden_size`)."""
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _dotted_keys(value, key + ".")
        else:
            yield key


def to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict of every setting (no ``source``), ready for YAML or a checkpoint."""
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    d.pop("explicit", None)
    return d


def dump_yaml(cfg: ExperimentConfig, path: str) -> None:
    """Write the full resolved config, atomically: a crash never leaves half a file."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
