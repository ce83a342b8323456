"""`mdm` command line. Thin: parses arguments and calls the package; `python -m megatron_mdm.cli`
is the same command (for `torchrun -m megatron_mdm.cli ...`)."""

from __future__ import annotations

import argparse
import sys

from megatron_mdm.config import ConfigError, load_config


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    from megatron_mdm.training.loop import run_training

    run_training(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdm", description="Masked diffusion LM pretraining")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="pretrain a model from a YAML config")
    train.add_argument("config", help="experiment YAML (see configs/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mdm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
