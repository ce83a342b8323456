"""`mdm eval {ppl,likelihood,genppl,gsm8k}`: argument parsing only; the work is in the modules
of `megatron_mdm.eval`."""

from __future__ import annotations

import argparse


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_subparsers(dest="eval_command", required=True)


def run_eval_args(args) -> int:
    raise NotImplementedError(f"mdm eval {args.eval_command}")
