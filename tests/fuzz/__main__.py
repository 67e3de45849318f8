"""``python -m tests.fuzz --seconds N [--reader NAME] [--inputs N]``: a campaign.

Prints, per reader, inputs tried, clean errors, accepted inputs, crashes,
hangs and unclean exceptions, then every finding with its input path and
traceback. Exit status 1 when there was any finding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.fuzz import READERS, campaign, make_seeds, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--seconds", type=float, default=None, help="time per reader")
    p.add_argument("--inputs", type=int, default=None, help="inputs per reader")
    p.add_argument(
        "--reader", action="append", choices=sorted(READERS), help="one reader (repeatable)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds-dir", type=Path, help="where seed inputs are made (cached)")
    p.add_argument("--keep", type=Path, help="copy every finding's input here")
    args = p.parse_args(argv)
    if args.seconds is None and args.inputs is None:
        args.seconds = 60.0
    seeds = args.seeds_dir or Path(tempfile.gettempdir()) / "lowbit-fuzz-seeds"
    make_seeds(seeds)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    stats = campaign(
        args.reader or list(READERS),
        seeds,
        seconds=args.seconds,
        inputs=args.inputs,
        seed=args.seed,
        keep=args.keep,
    )
    print(table(stats))
    findings = [(s.reader, *f) for s in stats for f in s.findings]
    for reader, outcome, path, detail in findings:
        print(f"\n== {reader}: {outcome}: {path}\n{detail}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
