"""Thin wrapper: `python tools/convert_checkpoint.py export|import|reshard ...` = `mdm convert ...`."""

import sys

from megatron_mdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
