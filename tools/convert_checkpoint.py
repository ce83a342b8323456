"""Thin wrapper: `python tools/convert_checkpoint.py export|import|reshard ...` is
`mdm convert ...`, also from a checkout that is not installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _checkout, also under -P / -I
from _checkout import use_checkout  # noqa: E402

use_checkout()  # this checkout's megatron_mdm (and its kernels/), installed or not

from megatron_mdm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
