"""The mIoU per output of several evaluations side by side, a markdown table (docs/training.md's).

    python tools/output_table.py all=runs/a/eval/evaluation.json linear=runs/b/eval/evaluation.json

Each argument is LABEL=PATH[,PATH...]: one column. Several paths (runs with other seeds) give
their mean and, in brackets, their lowest and highest value. The last row is AUC' (each
evaluation's `normalized_auc`).
"""

import argparse
import json
import statistics


def _column(spec):
    label, sep, paths = spec.partition("=")
    if not sep or not label or not paths:
        raise SystemExit(f"error: {spec!r}: expected LABEL=PATH[,PATH...]")
    results = []
    for path in paths.split(","):
        try:
            with open(path) as handle:
                results.append(json.load(handle))
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {path}: {error}")
    if len({len(r["outputs"]) for r in results}) > 1:
        raise SystemExit(f"error: {label}: its evaluations differ in their number of outputs")
    return label, results


def _cell(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(columns):
    """Markdown lines: one row per output, then AUC'; `columns` as (label, [results])."""
    count = max(len(results[0]["outputs"]) for _, results in columns)
    lines = ["| output | " + " | ".join(label for label, _ in columns) + " |", "|---:|" + "---:|" * len(columns)]
    for n in range(count):
        cells = [_cell([r["outputs"][n]["miou"] for r in results]) if n < len(results[0]["outputs"]) else ""
                 for _, results in columns]
        lines.append(f"| {n + 1} | " + " | ".join(cells) + " |")
    lines.append("| AUC' | " + " | ".join(_cell([r["normalized_auc"] for r in results]) for _, results in columns) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("columns", nargs="+", help="LABEL=PATH[,PATH...] of evaluation.json files")
    args = parser.parse_args(argv)
    print("\n".join(table([_column(spec) for spec in args.columns])))


if __name__ == "__main__":
    main()
