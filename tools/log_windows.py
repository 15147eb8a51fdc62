"""Median and best of a run's log.csv columns over windows of epochs (docs/training.md's tables).

    python tools/log_windows.py docs/camvid_shared_full_447/log.csv 302-313 314-323 324-333

    python tools/log_windows.py docs/camvid_shared_full_447/log.csv 438-447 --per-output

Epochs are 1-based (log.csv's `epoch` column + 1). Per window: val mIoU at outputs 1, 8 and 16
and the training mIoU at output 16 as median / highest, the val loss as median / lowest. With
`--per-output`, one row per output instead: the medians of its training and val mIoU, their
difference, and its training and val loss (the training columns as Keras logs them: batches
in training mode, dropout and augmentation on).
"""

import argparse
import csv
import statistics

COLUMNS = ("val_output_1_miou", "val_output_8_miou", "val_output_16_miou", "output_16_miou", "val_loss")


def _window(rows, first, last):
    chosen = [row for row in rows if first <= int(row["epoch"]) + 1 <= last]
    if not chosen:
        raise SystemExit(f"error: no epoch of {first}-{last} in the log")
    return chosen


def window_row(rows, first, last):
    chosen = _window(rows, first, last)
    cells = []
    for column in COLUMNS:
        values = [float(row[column]) for row in chosen]
        best = min(values) if column.endswith("loss") else max(values)
        cells.append(f"{statistics.median(values):.3f} / {best:.3f}")
    return f"| {first} to {last} | " + " | ".join(cells) + " |"


def output_rows(rows, first, last):
    """Per output k: | k | train mIoU | val mIoU | train - val | train loss | val loss |, medians."""
    chosen = _window(rows, first, last)
    median = lambda column: statistics.median(float(row[column]) for row in chosen)
    count = sum(1 for column in chosen[0] if column.startswith("val_output_") and column.endswith("_miou"))
    lines = []
    for k in range(1, count + 1):
        train, val = median(f"output_{k}_miou"), median(f"val_output_{k}_miou")
        losses = median(f"output_{k}_loss"), median(f"val_output_{k}_loss")
        lines.append(f"| {k} | {train:.3f} | {val:.3f} | {train - val:.3f} | {losses[0]:.3f} | {losses[1]:.3f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a run's log.csv")
    parser.add_argument("windows", nargs="+", help="FIRST-LAST epoch ranges, 1-based")
    parser.add_argument("--per-output", action="store_true", help="one row per output (medians over each window)")
    args = parser.parse_args(argv)
    with open(args.log) as handle:
        rows = list(csv.DictReader(handle))
    for window in args.windows:
        first, last = (int(part) for part in window.split("-"))
        if args.per_output:
            print(f"epochs {first} to {last}:\n\n| output | train mIoU | val mIoU | train - val | train loss | val loss |\n"
                  + "|---:" * 6 + "|")
            print("\n".join(output_rows(rows, first, last)) + "\n")  # a blank line ends the table
        else:
            print(window_row(rows, first, last))


if __name__ == "__main__":
    main()
