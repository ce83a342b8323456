"""Regenerate `configs/smdm/` (one MDM and one ARM config per SMDM family member) from the table
in `megatron_mdm/model/families.py`, so the sizes live in one place.

    python tools/generate_configs.py            # write the files
    python tools/generate_configs.py --check    # exit 1 if they differ from the table (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _checkout, also under -P / -I
from _checkout import use_checkout  # noqa: E402

ROOT = use_checkout()  # this checkout's megatron_mdm (and its kernels/), installed or not

from megatron_mdm.model.families import (  # noqa: E402
    render_family_configs,
    write_family_configs,
)


def stale_files(directory: Path) -> list[str]:
    """Names under `directory` that are missing or differ from what the table renders."""
    out = []
    for name, text in render_family_configs().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate_configs.py", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "configs" / "smdm")
    parser.add_argument(
        "--check", action="store_true", help="only report files that are out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.output_dir)
        for name in stale:
            print(f"out of date: {args.output_dir / name}", file=sys.stderr)
        return 1 if stale else 0
    paths = write_family_configs(args.output_dir)
    print(f"wrote {len(paths)} configs to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
