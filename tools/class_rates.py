"""What each output predicts, per class, from an evaluation.json's confusion matrices.

    python -m itnet_keras.evaluate docs/camvid_shared_full_313/camvid_shared_full_313.keras --output /tmp/ev313
    python tools/class_rates.py /tmp/ev313/evaluation.json --outputs 1 9 16

(evaluation.json files written before the confusion matrices were recorded, such as those
committed in docs/, need the evaluation run again.)

One markdown row per class: its share of the split's labelled pixels, then for each chosen
output the share of pixels predicted as it, its recall and its precision (metrics.class_rates).
A predicted share below the label share with high precision means the output draws the class
too small; above it with low precision, too large.
"""

import argparse
import json

from itnet_keras.console import quiet_startup

if __name__ == "__main__":  # TensorFlow loads quietly, before the imports below
    quiet_startup()

import numpy as np  # noqa: E402

from itnet_keras.metrics import class_rates  # noqa: E402


def _cell(value):
    return "-" if np.isnan(value) else f"{value:.3f}"


def table(result, outputs):
    """The markdown lines for `outputs` (1-based) of an `evaluate_model` result."""
    by_number = {o["output"]: o for o in result["outputs"]}
    missing = [n for n in outputs if n not in by_number]
    if missing:
        raise SystemExit(f"error: no output {missing[0]} in the evaluation (it has 1 to {len(by_number)})")
    if "confusion_matrix" not in by_number[outputs[0]]:
        raise SystemExit("error: the evaluation has no confusion matrices (written before they were recorded): "
                         "run python -m itnet_keras.evaluate again")
    rates = [class_rates(by_number[n]["confusion_matrix"]) for n in outputs]
    heads = [f"{what} {n}" for what in ("predicted", "recall", "precision") for n in outputs]
    lines = ["| class | labelled | " + " | ".join(heads) + " |", "|---|" + "---:|" * (1 + len(heads))]
    for c, name in enumerate(by_number[outputs[0]]["iou_per_class"]):
        cells = [_cell(r[what][c]) for what in ("predicted_share", "recall", "precision") for r in rates]
        lines.append(f"| {name} | {_cell(rates[0]['label_share'][c])} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", help="an evaluation.json written by python -m itnet_keras.evaluate")
    parser.add_argument("--outputs", type=int, nargs="+", default=[1, 8, 16], help="1-based outputs (default: 1 8 16)")
    args = parser.parse_args(argv)
    try:
        with open(args.evaluation) as handle:
            result = json.load(handle)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {args.evaluation}: {error}")
    print("\n".join(table(result, args.outputs)))


if __name__ == "__main__":
    main()
