"""Graph memory of exported files beside the cost model's graph size (SPEC s.6).

    python export/graph_memory.py MODEL.keras [--input-size 360x480] [--json]
    python export/graph_memory.py FILE.tflite [--json]
    python export/graph_memory.py --presets camvid_shared camvid_independent [--output docs/graph_memory.md]

For a `.keras` model or a preset (random weights: memory does not depend on them) it
converts the loop model and an unrolled copy (float32; `--quant` names the loop's modes instead)
and prints, per file: WHILE ops, file bytes, constant (weight) bytes, the peak bytes of
live activations of the `outputs` signature (`itnet_keras.export.measure.memory`), and the cost
model's collapsed and unrolled graph size of the last output.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from itnet_keras.cli import description, parse_size, table_path
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.datasets import DATASETS
from itnet_keras.export import QUANT_MODES
from itnet_keras.presets import PRESET_DATASET


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/graph_memory.py", description=description(__doc__))
    parser.add_argument("file", nargs="?", help="a .keras model or a .tflite file")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESET_DATASET))
    parser.add_argument("--input-size", type=parse_size, help="HEIGHTxWIDTH")
    parser.add_argument("--quant", nargs="+", choices=QUANT_MODES,
                        help="the files to convert and measure (default: float32); not for a .tflite file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--output", type=table_path,
                        help="also write the markdown table there, and its data as .json beside it (x.md, x.json)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.evaluate import load_itnet  # noqa: E402
from itnet_keras.export.measure.memory import file_row, format_rows, model_rows  # noqa: E402
from itnet_keras.files import write_result_files  # noqa: E402
from itnet_keras.model import build_itnet  # noqa: E402


def rows_for(args, work):
    if args.presets:
        rows = []
        for preset in args.presets:
            size = args.input_size or DATASETS[PRESET_DATASET[preset]].image_size
            model = build_itnet(preset, input_shape=(*size, 3))
            rows += model_rows(model, preset, size, work, args.quant or ["float32"])
        return rows
    source = Path(args.file)
    if source.suffix == ".tflite":
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist")
        return [file_row(source, source.name)]
    model = load_itnet(source)
    size = args.input_size or tuple(model.input_shape[1:3])
    if None in size:
        raise ValueError(f"{source} has an open input size: pass --input-size HEIGHTxWIDTH")
    return model_rows(model, source.stem, size, work, args.quant or ["float32"])


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_startup(args.verbose)
    if (args.file is None) == (args.presets is None):
        parser.error("give a .keras/.tflite file or --presets" + (", not both" if args.file else ""))
    if args.file and Path(args.file).suffix == ".tflite":
        for flag, value in (("--quant", args.quant), ("--input-size", args.input_size)):
            if value:
                parser.error(f"{flag} is for a .keras model or --presets: {args.file} is converted already")
    try:
        with tempfile.TemporaryDirectory() as work:
            rows = rows_for(args, work)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = format_rows(rows)
    print(json.dumps(rows, indent=1) if args.json else table)
    if args.output:
        command = "python export/graph_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_result_files(args.output, command, table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
