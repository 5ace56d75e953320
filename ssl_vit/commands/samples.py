"""`ssl-vit samples RUN [--against OTHER]`: which samples a run trained on, per epoch, from its samples record.

    ssl-vit samples runs/mpp_b16                     # epoch 0: 1281167 samples, 0 duplicates, 0 missing
    ssl-vit samples runs/resumed --against runs/whole   # identical global batches, or the first step that differs

The record is written when the run trains with `train.record_samples=true` (`train/sample_records.py`): every
rank's key hashes of every step, over every resume. Exit status: 0 when every finished epoch saw each sample
exactly once (or, with --against, when every step both runs trained holds the same keys), 1 otherwise, 2 on a
usage error (no record).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory trained with train.record_samples=true")
    parser.add_argument("--against", metavar="OTHER", default=None,
                        help="another run: compare the two runs' global batches step by step, as sets of keys")


def run(args: argparse.Namespace) -> int:
    from ..train.sample_records import epoch_counts, first_difference, read_steps

    steps = read_steps(args.run)
    for step in steps.incomplete:
        print(f"step {step}: not every rank recorded it (its last attempt was stopped while writing)")
    if args.against is not None:
        other = read_steps(args.against)
        common = set(steps.rows) & set(other.rows)
        differing = first_difference(steps, other)
        if differing is not None:
            print(f"step {differing}: the global batches differ ({args.run} and {args.against})")
            return 1
        print(f"{len(common)} steps in both runs: identical global batches (as sets of keys)")
        return 0
    failed = bool(steps.incomplete)
    for count in epoch_counts(steps):
        print(count.line())
        failed |= count.finished and (count.duplicates > 0 or count.missing > 0)
    return 1 if failed else 0
