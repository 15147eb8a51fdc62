"""mIoU per output of exported `.tflite` and `.onnx` files on a split, beside the Keras model's.

    python export/measure_accuracy.py MODEL.keras FILE.tflite|FILE.onnx [...] [--data camvid --scale 2] \
        [--split val] [--signature {outputs,anytime,finish}] [--output docs/export_accuracy.md]

`--data` and `--scale` default to what the model's run folder recorded (`config.json` beside
it), as for `python -m itnet_keras.evaluate`.

`--signature` picks how a `.tflite` file computes output n: all outputs in one `outputs`
call (the default), `anytime(image, n)`, or `encode`, n - 1 `step` calls and `finish`.
A static file (`--flavor static`) fills the row of its output n only.
"""

import argparse
import sys
from pathlib import Path

from itnet_keras.cli import description, positive, table_path
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.export import EVALUATED_SIGNATURES
from itnet_keras.presets import DATASET_NAMES


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/measure_accuracy.py", description=description(__doc__))
    parser.add_argument("model", help="the .keras model the files were exported from")
    parser.add_argument("files", nargs="+", help=".tflite or .onnx files")
    parser.add_argument("--data", choices=DATASET_NAMES,
                        help="default: the one the model's training recorded, else the one with its class count")
    parser.add_argument("--data-dir")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scale", type=positive(int), help="default: the training scale recorded beside the model")
    parser.add_argument("--limit", type=positive(int))
    parser.add_argument("--signature", default="outputs", choices=EVALUATED_SIGNATURES,
                        help="how each output of a .tflite file is computed")
    parser.add_argument("--output", type=table_path,
                        help="also write the markdown table there, and its data as .json beside it (x.md, x.json)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.augment import input_size  # noqa: E402
from itnet_keras.evaluate import evaluate_model, evaluation_inputs, load_itnet  # noqa: E402
from itnet_keras.export.measure.accuracy import check_signature, exported_mious, file_input_size  # noqa: E402
from itnet_keras.files import markdown_table, write_result_files  # noqa: E402
from itnet_keras.pipeline import make_dataset  # noqa: E402


def check_input_size(path, spec, scale, given=True):
    """Refuse a file whose fixed input size is not the dataset's at `scale` (`given` as --scale,
    else the model's recorded training scale or 1), or that is no model."""
    try:
        size = file_input_size(path)
    except Exception as error:  # LiteRT and onnxruntime raise ValueError, RuntimeError, struct.error, ...
        raise ValueError(f"cannot read {path} as an exported ItNet ({type(error).__name__}: {error})") from None
    expected = input_size(spec, scale)
    if size != expected:
        h, w = spec.image_size
        fits = [s for s in range(1, min(h, w) + 1) if h % s == 0 and w % s == 0 and (h // s, w // s) == size]
        hint = f": pass --scale {fits[0]}" if fits else ""
        source = (f"--scale {scale}" if given else
                  f"scale {scale} (the model's training scale, recorded beside it, else 1)")
        raise ValueError(f"{path} takes {size[0]}x{size[1]} images but {source} gives {spec.name} images "
                         f"of {expected[0]}x{expected[1]}{hint}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    try:
        for path in [args.model, *args.files]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path} does not exist")
        model = load_itnet(args.model)
        data, scale = evaluation_inputs(model, args.model, args.data, args.scale)
        dataset = make_dataset(data, args.split, data_dir=args.data_dir, batch_size=4, scale=scale, limit=args.limit)
        for path in args.files:
            if Path(path).suffix not in (".tflite", ".onnx"):
                raise ValueError(f"{path}: expected a .tflite or .onnx file")
            check_signature(path, args.signature)
            check_input_size(path, dataset.spec, scale, given=args.scale is not None)
        results = {"keras": [o["miou"] for o in evaluate_model(model, dataset)["outputs"]]}
        names = [Path(path).name for path in args.files]
        for path, name in zip(args.files, names):  # a column per file: its name, or its path where names repeat
            results[name if names.count(name) == 1 else path] = exported_mious(path, dataset,
                                                                              signature=args.signature)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = list(results)
    rows = []
    for n in range(len(results["keras"])):
        cells = [results[k][n] if n < len(results[k]) else None for k in names]
        rows.append([n + 1, *("" if c is None else f"{c:.4f}" for c in cells)])
    table = markdown_table(["output", *names], rows)
    print(table)
    if args.output:
        command = "python export/measure_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_result_files(args.output, command, f"{data} {args.split}, {len(dataset.split)} images, "
                           f"signature {args.signature}\n\n{table}",
                           results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
