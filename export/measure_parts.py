"""Where the time of outputs 1 and 2 goes under LiteRT: parts of the static graph, float32
beside int8, as the converter makes them and with `xnnpack_forms`.

    python export/measure_parts.py [MODEL.keras] [--preset camvid_shared] [--repeats 61] [--output docs/x.md]

The preset's network with random weights (as export/measure_latency.py --quant times it),
or MODEL's, at the input size of the preset's dataset; int8 files calibrate on `--calibration-images`
training images. Batch 1, 1 thread, LiteRT's default CPU delegate (XNNPACK), all files timed
in turns. See `itnet_keras.export.measure.parts`.
"""

import argparse
import platform
import statistics
import sys

from itnet_keras.cli import description, positive, table_path
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.datasets import DATASETS
from itnet_keras.presets import PRESET_DATASET


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/measure_parts.py", description=description(__doc__))
    parser.add_argument("model", nargs="?", help="a trained .keras ItNet (default: --preset, random weights)")
    parser.add_argument("--preset", choices=sorted(PRESET_DATASET), default="camvid_shared")
    parser.add_argument("--repeats", type=positive(int), default=61)
    parser.add_argument("--calibration-images", type=positive(int), default=4)
    parser.add_argument("--data-dir", help="the preset's dataset (calibration images; default: its usual place)")
    parser.add_argument("--output", type=table_path,
                        help="also write the markdown table there, and its data as .json beside it (x.md, x.json)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.export.camera_input import zero_point  # noqa: E402
from itnet_keras.export.measure.latency import preset_model, timed_in_turns  # noqa: E402
from itnet_keras.export.measure.parts import part_calls  # noqa: E402
from itnet_keras.export.tflite import calibration_sample  # noqa: E402
from itnet_keras.files import markdown_table, write_result_files  # noqa: E402
from itnet_keras.model import build_itnet, model_args  # noqa: E402


def format_table(times):
    """One row per part: median (and fastest) ms of each file, and float32 / int8 of the
    medians of each variant."""
    header = ["part", "float32 ms", "int8 ms", "float32 / int8", "float32 ms, forms", "int8 ms, forms",
              "float32 / int8, forms"]
    rows = []
    for part in dict.fromkeys(name for name, _, _ in times):
        cells = [part]
        for variant in ("converter", "forms"):
            f32, int8 = times[part, variant, "float32"], times[part, variant, "int8"]
            cells += [f"{statistics.median(f32) * 1e3:.2f} ({min(f32) * 1e3:.2f})",
                      f"{statistics.median(int8) * 1e3:.2f} ({min(int8) * 1e3:.2f})",
                      f"{statistics.median(f32) / statistics.median(int8):.2f}x"]
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    spec = DATASETS[PRESET_DATASET[args.preset]]
    if zero_point(spec.normalization) is None:  # (was: measured with CamVid's byte quantization)
        print(f"error: --preset {args.preset}: the parts' int8 files take camera bytes as the normalized image's "
              f"quantization, which {spec.name}'s normalization (pixel * {spec.normalization[0]:.6g} + "
              f"{spec.normalization[1]:.6g}) is not: measure a CamVid preset", file=sys.stderr)
        return 2
    if args.model:  # its weights at the dataset's input size
        try:
            trained = preset_model(args.model, args.preset)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if model_args(trained)["num_iterations"] < 2:  # (was: its output 1 timed twice, the second as output 2)
            print(f"error: {args.model} has one output; the parts are those of outputs 1 and 2", file=sys.stderr)
            return 2
        model = build_itnet(input_shape=(*spec.image_size, 3), **model_args(trained))
        model.set_weights(trained.get_weights())
    else:
        model = build_itnet(args.preset, input_shape=(*spec.image_size, 3))
    try:
        images, _ = calibration_sample(spec.name, spec.image_size, args.calibration_images, data_dir=args.data_dir)
    except (ValueError, OSError) as error:  # the dataset missing or damaged
        print(f"error: {error}", file=sys.stderr)
        return 2
    calls = part_calls(model, images, spec.normalization)
    times = dict(zip(calls, timed_in_turns({" / ".join(k): c for k, c in calls.items()}, args.repeats).values()))
    table = format_table(times)
    print(table)
    if args.output:
        command = "python export/measure_parts.py " + " ".join(sys.argv[1:] if argv is None else argv)
        setup = (f"{platform.machine()}, LiteRT default CPU delegate (XNNPACK), 1 thread, batch 1, "
                 f"{spec.image_size[0]}x{spec.image_size[1]}, median (fastest) of {args.repeats}, "
                 "the files timed in turns\n\n")
        write_result_files(args.output, command, setup + table, {" / ".join(k): v for k, v in times.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
