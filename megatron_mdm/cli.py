"""`mdm` command line. Thin: parses arguments and calls the package; `python -m megatron_mdm.cli`
is the same command (for `torchrun -m megatron_mdm.cli ...`)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import warnings

from megatron_mdm.config import load_config
from megatron_mdm.data.preprocess import add_preprocess_arguments, run_preprocess_args
from megatron_mdm.data.sentencepiece_training import (
    add_tokenizer_train_arguments,
    run_tokenizer_train_args,
)
from megatron_mdm.inference.commands import add_generate_arguments
from megatron_mdm.training.preemption import PreemptionWatcher, StoppedBeforeTraining
from megatron_mdm.utils import QUIET_IMPORT_WARNINGS, MDMError

TRAINING_COMMANDS = ("train", "sft")


def _command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`, before parsing (building the parser imports a lot)."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token in ("--local_rank", "--local-rank"):
            skip_next = True
        elif not token.startswith("-"):
            return token
    return None


def _train(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        from megatron_mdm.training.loop import run_training

        run_training(cfg, args.stop)
    except StoppedBeforeTraining as exc:
        print(f"mdm: {exc}", file=sys.stderr)
    return 0


def _sft(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        from megatron_mdm.training.sft_run import run_sft

        run_sft(cfg, args.stop)
    except StoppedBeforeTraining as exc:
        print(f"mdm: {exc}", file=sys.stderr)
    return 0


def _eval(args) -> int:
    from megatron_mdm.parallel.distributed import prepare_accelerator

    prepare_accelerator()
    from megatron_mdm.eval.commands import run_eval_args

    return run_eval_args(args)


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_mdm.convert.commands import add_convert_arguments

    add_convert_arguments(parser)


def _convert(args) -> int:
    from megatron_mdm.parallel.distributed import prepare_accelerator

    prepare_accelerator()  # DeepSpeed's zero_to_fp32 (for --fp32-master) imports deepspeed
    from megatron_mdm.convert.commands import run_convert_args

    return run_convert_args(args)


def _generate(args) -> int:
    from megatron_mdm.parallel.distributed import prepare_accelerator

    prepare_accelerator()
    from megatron_mdm.inference.commands import run_generate_args

    return run_generate_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdm", description="Masked diffusion LM pretraining")
    # The `deepspeed` launcher passes --local_rank=N; the same value is in LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="pretrain a model from a YAML config")
    train.add_argument("config", help="experiment YAML (see configs/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.set_defaults(func=_train)
    pre = sub.add_parser("preprocess", help="tokenize text into a megatron-core indexed dataset")
    add_preprocess_arguments(pre)
    pre.set_defaults(func=run_preprocess_args)
    conv = sub.add_parser("convert", help="export / import / reshard checkpoints")
    conv.set_defaults(func=_convert)
    _add_convert_arguments(conv)
    gen = sub.add_parser("generate", help="complete a prompt with a trained model")
    add_generate_arguments(gen)
    gen.set_defaults(func=_generate)
    sft = sub.add_parser(
        "sft", help="supervised fine-tuning (docs/design.md §4) from a YAML config"
    )
    sft.add_argument("config", help="experiment YAML with an `sft` section (configs/sft-*.yaml)")
    sft.add_argument("overrides", nargs="*", help="section.key=value overrides")
    sft.set_defaults(func=_sft)
    from megatron_mdm.eval.commands import add_eval_arguments

    ev = sub.add_parser("eval", help="likelihood, perplexity, generative perplexity, GSM8K")
    add_eval_arguments(ev)
    ev.set_defaults(func=_eval)
    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    tok_train = tok_sub.add_parser("train", help="train a sentencepiece tokenizer")
    add_tokenizer_train_arguments(tok_train)
    tok_train.set_defaults(func=run_tokenizer_train_args)
    from megatron_mdm.config_show import add_config_show_arguments, run_config_show_args

    cfg_cmd = sub.add_parser("config", help="inspect experiment configs")
    cfg_sub = cfg_cmd.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser(
        "show", help="resolved config, parameter counts, FLOPs and memory per GPU"
    )
    add_config_show_arguments(show)
    show.set_defaults(func=run_config_show_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=QUIET_IMPORT_WARNINGS)
    argv = sys.argv[1:] if argv is None else argv
    # Training commands take SIGTERM/SIGUSR1/SIGINT as "save and stop" from the first moment,
    # before the parser's imports and the set-up (training/preemption.py); others keep Python's.
    trains = _command(argv) in TRAINING_COMMANDS
    with PreemptionWatcher() if trains else contextlib.nullcontext() as stop:
        status = _run(argv, stop)
    if stop is not None and stop.received is not None:
        _ignore_ctrl_c_while_exiting()
    return status


def _run(argv: list[str], stop: PreemptionWatcher | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.stop = stop
        return args.func(args)
    except MDMError as exc:
        print(f"mdm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while training, or one before it started
        print("mdm: interrupted", file=sys.stderr)
        return 130


def _ignore_ctrl_c_while_exiting() -> None:
    """After a stop signal the command has saved (or had nothing to save) and the process is on
    its way out: atexit hooks and interpreter teardown, most of a second with torch.distributed
    and DeepSpeed loaded, during which Python puts back the default SIGINT action, so a second
    Ctrl-C there killed the finished run by the signal (status -2). There is nothing left to
    abort, so a further Ctrl-C is ignored and the run's own status (0 after a save) stands.
    SIG_IGN, unlike a Python handler, survives Python's teardown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
