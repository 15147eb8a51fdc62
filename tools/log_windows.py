"""Median and best of a run's log.csv columns over windows of epochs (docs/training.md's tables).

    python tools/log_windows.py device_runs/camvid_shared_full/log.csv 302-313 314-323 324-333

Epochs are 1-based (log.csv's `epoch` column + 1). Per window: val mIoU at outputs 1, 8 and 16
and the training mIoU at output 16 as median / highest, the val loss as median / lowest.
"""

import argparse
import csv
import statistics

COLUMNS = ("val_output_1_miou", "val_output_8_miou", "val_output_16_miou", "output_16_miou", "val_loss")


def window_row(rows, first, last):
    chosen = [row for row in rows if first <= int(row["epoch"]) + 1 <= last]
    if not chosen:
        raise SystemExit(f"error: no epoch of {first}-{last} in the log")
    cells = []
    for column in COLUMNS:
        values = [float(row[column]) for row in chosen]
        best = min(values) if column.endswith("loss") else max(values)
        cells.append(f"{statistics.median(values):.3f} / {best:.3f}")
    return f"| {first} to {last} | " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a run's log.csv")
    parser.add_argument("windows", nargs="+", help="FIRST-LAST epoch ranges, 1-based")
    args = parser.parse_args(argv)
    with open(args.log) as handle:
        rows = list(csv.DictReader(handle))
    for window in args.windows:
        first, last = (int(part) for part in window.split("-"))
        print(window_row(rows, first, last))


if __name__ == "__main__":
    main()
