"""`ssl-vit-shards build|verify` (also `python -m data_tools ...`).

Exit codes: 0 success; 1 `verify` found problems; 2 a usage or input error, printed as one line
`error: ...` with no traceback; 130 interrupted (Ctrl-C — run the same build again to resume).
"""
from __future__ import annotations

import argparse
import sys

from .build import build_split
from .errors import DataToolsError
from .options import CHECK_MODES, LABEL_MODES, parse_size
from .verify import verify_out


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one `error: ...` line (exit 2), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        raise DataToolsError(f"{message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except DataToolsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> _Parser:
    parser = _Parser(prog="ssl-vit-shards",
                     description="Image folders, file lists and parquet / datasets tables → WebDataset tar shards.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="pack an image folder, CSV/TSV file list or parquet / datasets table into "
                                     "OUT/NAME-000000.tar, ...",
                       description="Pack images into deterministic, resumable WebDataset shards plus "
                                   "OUT/_info.json. Rerun the same command after an interruption to resume.")
    b.add_argument("src", nargs="?", metavar="SRC",
                   help="image folder (SRC/<class>/.../<image>), .csv/.tsv file list, .parquet file, folder of "
                        ".parquet files, or a folder written by datasets' save_to_disk; leave out with --list")
    b.add_argument("out", metavar="OUT", help="folder for the shards and _info.json (shared by splits)")
    b.add_argument("--split", required=True, help="split name, e.g. train: shards are OUT/NAME-000000.tar, ...")
    b.add_argument("--labels", choices=LABEL_MODES, default="folder",
                   help="folder: class = top-level folder (or the list's / table's label column); none: unlabelled "
                        "(cls -1)")
    b.add_argument("--list", dest="list_file", metavar="FILE",
                   help="CSV/TSV with a header naming 'path' and 'label'; relative paths are relative to FILE")
    b.add_argument("--seed", type=int, default=0, help="shuffle seed of the input order (default 0)")
    b.add_argument("--shard-size", type=_size, default=256_000_000,
                   help="largest shard file, e.g. 256MB (default), 1GB, 512MiB")
    b.add_argument("--max-count", type=_positive_int, help="most samples per shard")
    b.add_argument("--resize-shorter", type=_positive_int, metavar="PX",
                   help="shrink images whose shorter side exceeds PX to PX (never upscales)")
    b.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)")
    b.add_argument("--check", choices=CHECK_MODES, default="header",
                   help="header (default): parse each image's header and check its end marker, which catches "
                        "truncated and non-image files at near copy speed; full: also decode all compressed data "
                        "(~6x slower; catches corruption inside it, which training would otherwise skip and count)")
    b.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="skip images with more than N pixels (width x height) before decoding them "
                        "(default: Pillow's decompression-bomb limit, 89,478,485)")
    b.add_argument("--image-column", metavar="NAME",
                   help="a table's column of encoded images (binary, or a struct with 'bytes'), when it is not found")
    b.add_argument("--label-column", metavar="NAME", help="a table's column of labels, when it is not found")
    b.add_argument("--workers", type=_positive_int, default=1, help="decoding processes (output is identical)")
    b.add_argument("--overwrite", action="store_true", help="delete this split's shards and rebuild from scratch")
    b.add_argument("--follow-symlinks", action="store_true", help="also follow symlinks that leave SRC (folders once per class; files "
                        "reached under two classes are skipped as ambiguous)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="decode every sample and check shards against OUT/_info.json",
                       description="Exit 0 when every check passes, 1 when anything is wrong.")
    v.add_argument("out", metavar="OUT")
    v.add_argument("--split", help="verify only this split (default: all in _info.json)")
    v.add_argument("--workers", type=_positive_int, default=1, help="processes checking shards in parallel")
    v.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="report images with more than N pixels (default: Pillow's decompression-bomb limit)")
    v.add_argument("--follow-symlinks", action="store_true",
                   help="also read shards that lead out of OUT through symlinks (refused by default: an unpacked "
                        "archive can link to any file)")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _build(args: argparse.Namespace) -> int:
    if args.src is None and args.list_file is None:
        raise DataToolsError("build needs SRC and OUT (or --list FILE and OUT)")
    summary = build_split(
        args.src, args.out, args.split, labels=args.labels, list_file=args.list_file, seed=args.seed,
        shard_size=args.shard_size, max_count=args.max_count, resize_shorter=args.resize_shorter,
        quality=args.quality, workers=args.workers, overwrite=args.overwrite,
        follow_symlinks=args.follow_symlinks, check=args.check, max_pixels=args.max_pixels,
        image_column=args.image_column, label_column=args.label_column, progress=not args.no_progress)
    print(summary.line())
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = verify_out(args.out, args.split, workers=args.workers, max_pixels=args.max_pixels,
                        progress=not args.no_progress, follow_symlinks=args.follow_symlinks)
    for problem in report.problems:
        print(problem)
    print(report.line())
    return 0 if report.ok else 1


def run(argv: list[str] | None = None) -> int:
    """The command without `main`'s error printing: a `DataToolsError` reaches the caller, for commands that run a
    build as one of their stages and say in their own one line what failed (`ssl-vit demo`)."""
    args = _parser().parse_args(argv)
    return _build(args) if args.command == "build" else _verify(args)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except DataToolsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
