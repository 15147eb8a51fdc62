"""Convert a trained ItNet (`.keras`) to TFLite or ONNX.

    python export/convert.py MODEL.keras --format tflite --quant int8 --output itnet_int8.tflite
    python export/convert.py MODEL.keras --flavor static --iterations 1 4 16 --quant int8 \
        --input-type uint8 --output itnet_int8.tflite   # itnet_int8_n1.tflite, _n4, _n16
    python export/convert.py MODEL.keras --format onnx --output itnet_float32.onnx

The dataset (`--data`, default: the one whose class count the model has) gives the labels,
the normalization and the default input size; `--quant int8` calibrates on a fixed sample
of its training images (`--calibration-images`, `--seed`), recorded in the metadata. The
`loop` flavour (default) holds every signature and the loop; `static` writes one file per
`--iterations` n (one subgraph, no control flow: MediaPipe's ImageSegmenter, the GPU
delegate). `--input-type uint8` takes camera bytes and normalizes in the graph.
TFLite metadata goes inside each file; a sidecar `.json` repeats it. See export/README.md.
"""

import argparse
import sys

from itnet_keras.cli import description, parse_size, positive, seed
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.datasets import DatasetError
from itnet_keras.export import CALIBRATION_IMAGES, FLAVORS, INPUT_TYPES, QUANT_MODES
from itnet_keras.presets import DATASET_NAMES


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/convert.py", description=description(__doc__))
    parser.add_argument("model", help="a trained ItNet .keras file")
    parser.add_argument("--format", choices=("tflite", "onnx"), default="tflite")
    parser.add_argument("--quant", choices=QUANT_MODES, default="float32", help="TFLite only")
    parser.add_argument("--flavor", choices=FLAVORS, default="loop",
                        help="TFLite: loop (all signatures) or static (one file per --iterations n)")
    parser.add_argument("--iterations", type=int, nargs="+", help="static: the outputs n, one file each")
    parser.add_argument("--input-type", choices=INPUT_TYPES, default="float32",
                        help="TFLite: uint8 takes camera bytes (normalization inside the graph); int8 (--quant int8 only) "
                             "the bytes minus 128, so that every op runs in XNNPACK")
    parser.add_argument("--data", choices=DATASET_NAMES, help="the model's dataset")
    parser.add_argument("--data-dir", help="dataset folder (int8 calibration images)")
    parser.add_argument("--input-size", type=parse_size, help="HEIGHTxWIDTH (default: the dataset's)")
    parser.add_argument("--calibration-images", type=positive(int), default=CALIBRATION_IMAGES,
                        help=f"int8: how many training images calibrate it ({CALIBRATION_IMAGES}: see export/README.md)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the calibration sample")
    parser.add_argument("--output", required=True, help="the file to write")
    add_verbose_flag(parser)
    return parser


def parse_args(argv=None):
    """The flags, with the combinations that cannot work refused (argparse's exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.flavor == "static" and (args.format != "tflite" or not args.iterations):
        parser.error("--flavor static needs --format tflite and --iterations n [n ...]")
    if args.flavor == "loop" and args.iterations:
        parser.error("--iterations needs --flavor static")
    if args.format == "onnx" and args.input_type != "float32":
        parser.error(f"--input-type {args.input_type} needs --format tflite")
    if args.format == "onnx" and args.quant != "float32":
        parser.error(f"--quant {args.quant} needs --format tflite (the ONNX file is float32)")
    if not args.output.endswith(f".{args.format}"):  # the sidecar is OUTPUT with .json: never the file itself
        parser.error(f"--output {args.output}: expected a file name ending in .{args.format}")
    return args


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(parse_args().verbose)

from itnet_keras.evaluate import load_itnet, model_dataset  # noqa: E402
from itnet_keras.export.tflite import calibration_sample, convert_static, convert_tflite  # noqa: E402
from itnet_keras.model import model_args  # noqa: E402


def run(args):
    model = load_itnet(args.model)
    # the dataset named, else the one of the model's class count: its labels and normalization go into the file
    spec = model_dataset(args.model, model_args(model)["num_classes"], args.data)
    input_size = args.input_size or spec.image_size
    if args.format == "onnx":
        from itnet_keras.export.onnx import convert_onnx  # lazy: onnx and tf2onnx load for --format onnx only

        return {args.output: convert_onnx(model, args.output, spec, input_size)}
    images = record = None
    if args.quant == "int8":
        images, record = calibration_sample(spec.name, input_size, args.calibration_images, args.seed,
                                            data_dir=args.data_dir)
    if args.flavor == "static":
        return convert_static(model, args.output, args.iterations, args.quant, spec, input_size, images, record,
                              args.input_type)
    return {args.output: convert_tflite(model, args.output, args.quant, spec, input_size, images, record,
                                        args.input_type)}


def main(argv=None):
    args = parse_args(argv)
    quiet_startup(args.verbose)
    try:
        written = run(args)
    except (OSError, ValueError, DatasetError, ImportError) as error:  # ImportError: no metadata writer
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, summary in written.items():
        print(f"wrote {path} ({summary['file_bytes']:,} bytes; ops: "
              + ", ".join(f"{k} {v}" for k, v in sorted(summary["ops"].items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
