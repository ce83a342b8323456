"""Tokenise a corpus into a megatron-core indexed dataset (PREFIX.bin/.idx); same as
`mdm preprocess`, for clusters where only the source tree is on the path.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type sentencepiece --tokenizer-model tok.model --workers 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _checkout, also under -P / -I
from _checkout import use_checkout  # noqa: E402

use_checkout()  # this checkout's megatron_mdm (and its kernels/), installed or not

from megatron_mdm.data.preprocess import (  # noqa: E402
    add_preprocess_arguments,
    run_preprocess_args,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="preprocess_data.py", description="Tokenise text into a megatron-core indexed dataset"
    )
    add_preprocess_arguments(parser)
    return run_preprocess_args(parser.parse_args(argv))


if __name__ == "__main__":  # guard also needed by the spawned tokenizer workers
    sys.exit(main())
