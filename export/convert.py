"""Convert a trained ItNet (`.keras`) to TFLite or ONNX.

    python export/convert.py MODEL.keras --format tflite --quant int8 --output itnet_int8.tflite
    python export/convert.py MODEL.keras --format onnx --output itnet.onnx

The dataset (`--data`, default: the one whose class count the model has) gives the labels,
the normalization and the default input size; `--quant int8` calibrates on a fixed sample
of its training images (`--calibration-images`, `--seed`), recorded in the metadata. A
sidecar `OUTPUT.json` holds what an app needs beside the file. See export/README.md.
"""

import argparse
import sys

from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.costs import parse_size
from itnet_keras.datasets import DATASETS, DatasetError, get_spec
from itnet_keras.export import QUANT_MODES


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/convert.py", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a trained ItNet .keras file")
    parser.add_argument("--format", choices=("tflite", "onnx"), default="tflite")
    parser.add_argument("--quant", choices=QUANT_MODES, default="float32", help="TFLite only")
    parser.add_argument("--data", choices=sorted(DATASETS), help="the model's dataset")
    parser.add_argument("--data-dir", help="dataset folder (int8 calibration images)")
    parser.add_argument("--input-size", type=parse_size, help="HEIGHTxWIDTH (default: the dataset's)")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.add_argument("--output", required=True, help="the file to write")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.evaluate import load_itnet  # noqa: E402
from itnet_keras.export.tflite import ExportError, calibration_sample, convert_tflite  # noqa: E402
from itnet_keras.model import model_args  # noqa: E402


def dataset_for(model, name):
    """The dataset named, else the one whose class count the model has."""
    if name is not None:
        return get_spec(name)
    classes = model_args(model)["num_classes"]
    matches = [spec for spec in DATASETS.values() if spec.num_classes == classes]
    if len(matches) != 1:
        raise ExportError(f"the model has {classes} classes: pass --data to name its dataset")
    return matches[0]


def run(args):
    model = load_itnet(args.model)
    spec = dataset_for(model, args.data)
    input_size = args.input_size or spec.image_size
    if args.format == "onnx":
        from itnet_keras.export.onnx import convert_onnx

        return convert_onnx(model, args.output, spec, input_size)
    images = record = None
    if args.quant == "int8":
        images, record = calibration_sample(spec.name, input_size, args.calibration_images, args.seed,
                                            data_dir=args.data_dir)
    return convert_tflite(model, args.output, args.quant, spec, input_size, images, record)


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    try:
        summary = run(args)
    except (OSError, ValueError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({summary['file_bytes']:,} bytes; ops: "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary["ops"].items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
