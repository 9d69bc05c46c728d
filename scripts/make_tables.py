#!/usr/bin/env python
"""Render the model-zoo tables from result records.

    python scripts/make_tables.py --records results/demo/records [--published [results/published]]
                                  [--format md|csv] [--out results/demo/model_zoo.md]
                                  [--all-csv results/demo/all_records.csv]

--published adds the rows of published numbers (records in results/published/, each citing its source) below the
measured ones, so each checkpoint is read next to the reference on the same protocol. With --out, the markdown
also links every plot the runs wrote, relative to the output file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from byol_bench.cli import main_guard
from byol_bench.fileio import atomic_write_text
from byol_bench.records import load_records
from byol_bench.tables import PUBLISHED_DIR, read_timings, records_frame, render_csv, render_markdown, render_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True, type=Path, help="folder of result records (searched recursively)")
    parser.add_argument("--published", nargs="?", const=PUBLISHED_DIR, type=Path,
                        help=f"also render the published rows of this folder (default {PUBLISHED_DIR})")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="table format printed and written")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--timings", type=Path,
                        help="the suite's run_times.tsv (protocol<TAB>preset<TAB>seconds<TAB>status): print a summary "
                             "and add the runs to the report")
    parser.add_argument("--all-csv", type=Path, help="also write every metric of every record to this CSV")
    args = parser.parse_args()
    records = load_records(args.records)
    if not records:  # a wrong folder, or runs that all failed: an empty report would hide either
        raise ValueError(f"{args.records}: no result records in this folder (searched recursively); pass the "
                         "records folder the runners wrote, <out_dir>/records")
    if args.published:
        records += load_records(args.published)
    link_root = args.out.parent if args.out else None
    runs = read_timings(args.timings) if args.timings else None
    text = render_markdown(records, link_root, runs) if args.format == "md" else render_csv(records)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.all_csv:
        atomic_write_text(args.all_csv, records_frame(records).to_csv(index=False))
    if runs:
        print(f"\n== summary: protocol, preset, wall time, headline figure\n{render_summary(records, runs)}")


if __name__ == "__main__":
    main_guard(main, out_option="--out")
