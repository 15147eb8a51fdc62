"""Latency per output under LiteRT: the loop file (`anytime`, and `encode` + `step` /
`finish` as an app drives it), and all N outputs of the loop file beside the unrolled file.

    python export/measure_latency.py FILE.tflite [--unrolled UNROLLED.tflite] [--threads 1 2] [--repeats 5]
    python export/measure_latency.py --preset camvid_shared [--input-size 360x480] [--output docs/latency.md]
    python export/measure_latency.py --preset camvid_shared --quant float32 int8 --iterations 1 4 16 \
        [--input-type uint8] [--no-loop] [--model TRAINED.keras] --threads 1

With `--preset` the files are converted first (float32, random weights: latency does not
depend on them): the loop file, the unrolled file, and unrolled graphs of each output n
(the per-output baselines). Batch 1, LiteRT's default CPU delegate, median of `--repeats`
calls.
With `--quant`, the files of each mode side by side instead: the static file of each
output n (`--flavor static`) and the loop file's `anytime(image, n)` (int8 files with
`--input-type`); int8 files calibrate on `--calibration-images` CamVid/Cityscapes
training images.
See `itnet_keras.export.measure.latency` for what each column measures.
"""

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from itnet_keras.cli import description, parse_size, positive, table_path
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.datasets import DATASETS
from itnet_keras.export import INPUT_TYPES, QUANT_MODES
from itnet_keras.presets import PRESET_DATASET, resolve_model_args


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/measure_latency.py", description=description(__doc__))
    parser.add_argument("file", nargs="?", help="a loop .tflite file from export/convert.py")
    parser.add_argument("--unrolled", help="the unrolled .tflite file to compare with")
    parser.add_argument("--preset", choices=sorted(PRESET_DATASET), help="convert this preset first")
    parser.add_argument("--input-size", type=parse_size)
    parser.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=positive(int), default=5)
    parser.add_argument("--quant", nargs="+", choices=QUANT_MODES,
                        help="with --preset: static and loop files in these modes, side by side")
    parser.add_argument("--iterations", type=positive(int), nargs="+", help="--quant: the outputs n (default: the powers of 2 up to N, and N)")
    parser.add_argument("--input-type", choices=INPUT_TYPES,
                        help="--quant: the input of the int8 files (default: float32)")
    parser.add_argument("--no-loop", action="store_true", help="--quant: static files only")
    parser.add_argument("--model", help="--quant: the files of this trained .keras ItNet (at --preset's dataset)"
                        " instead of random weights")
    parser.add_argument("--calibration-images", type=positive(int),
                        help="--quant int8: calibration sample (default: 4)")
    parser.add_argument("--data-dir", help="--quant int8: dataset folder of the calibration images")
    parser.add_argument("--output", type=table_path,
                        help="also write the markdown table there, and its data as .json beside it (x.md, x.json)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.export.measure.latency import (  # noqa: E402
    measure, preset_files, preset_model, quant_files, quant_latency,
)
from itnet_keras.export.tflite import calibration_sample  # noqa: E402
from itnet_keras.files import markdown_table, write_result_files  # noqa: E402
from itnet_keras.model import model_args  # noqa: E402


def format_rows(rows):
    """One table per thread count: ms per output n, and each path over its baseline."""
    lines = []
    for row in rows:
        unrolled, with_state = row.get("unrolled_s"), row.get("unrolled_state_s")
        paths = (("loop `anytime`", row["anytime_s"]), ("app, `finish` last", row["finish_s"]),
                 ("app, `step` only", row["step_s"]))
        header = ["output n"]
        for name, _ in paths:
            header += [f"{name} ms", "/ unrolled"] if unrolled else [f"{name} ms"]
        if unrolled:
            header += ["unrolled ms", "unrolled + state ms", "`step` only / unrolled + state"]
        cells = []
        for i in range(len(row["anytime_s"])):
            line = [i + 1]
            for _, seconds in paths:
                line += [f"{seconds[i] * 1e3:.1f}"] + ([f"{seconds[i] / unrolled[i]:.2f}"] if unrolled else [])
            if unrolled:
                line += [f"{unrolled[i] * 1e3:.1f}", f"{with_state[i] * 1e3:.1f}",
                         f"{row['step_s'][i] / with_state[i]:.2f}"]
            cells.append(line)
        lines += [f"\n{row['threads']} thread(s):\n", markdown_table(header, cells)]
        lines.append(f"\nall N outputs (`outputs`, N full-resolution maps): loop {row['loop_outputs_s'] * 1e3:.1f} ms")
        if row["unrolled_outputs_s"] is not None:
            unrolled = row["unrolled_outputs_s"]
            lines[-1] += (f", unrolled {unrolled * 1e3:.1f} ms, loop / unrolled = "
                          f"{row['loop_outputs_s'] / unrolled:.2f}")
    return "\n".join(lines)


def format_quant_rows(rows, quants):
    """One row per output n: ms of each file, and float32 / each other mode."""
    names = list(next(iter(rows.values())))
    ratios = [(f"{flavor} float32 / {quant}", f"{flavor} float32", f"{flavor} {quant}")
              for flavor in ("static", "loop") for quant in quants if quant != "float32"
              if f"{flavor} float32" in names and f"{flavor} {quant}" in names]
    header = ["output n", *(f"{name} ms" for name in names), *(r[0] for r in ratios)]
    return markdown_table(header, [[n, *(f"{row[name] * 1e3:.1f}" for name in names),
                                    *(f"{row[a] / row[b]:.2f}x" for _, a, b in ratios)] for n, row in rows.items()])


def run_quant(args, trained=None):
    """The `--quant` table: (markdown, rows); the files of the `trained` model if one is given."""
    dataset = DATASETS[PRESET_DATASET[args.preset]]
    size = args.input_size or dataset.image_size
    n_max = model_args(trained)["num_iterations"] if trained else resolve_model_args(args.preset)["num_iterations"]
    iterations = args.iterations or sorted({*(2**k for k in range(n_max.bit_length()) if 2**k <= n_max), n_max})
    images = None
    if "int8" in args.quant:
        images, _ = calibration_sample(dataset.name, size, args.calibration_images or 4, data_dir=args.data_dir)
    with tempfile.TemporaryDirectory() as work:
        files = quant_files(args.preset, size, work, args.quant, iterations, images, args.input_type or "float32",
                            loop=not args.no_loop, trained=trained)
        rows = {}
        for count in args.threads:
            rows[count] = quant_latency(files, count, args.repeats, iterations)
    table = "\n".join(f"\n{count} thread(s):\n\n" + format_quant_rows(r, args.quant) for count, r in rows.items())
    return table, {str(count): {str(n): r for n, r in per.items()} for count, per in rows.items()}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_startup(args.verbose)
    if (args.file is None) == (args.preset is None):
        parser.error("give a .tflite file or --preset" + (", not both" if args.file else ""))
    if args.quant and not args.preset:
        parser.error("--quant needs --preset")
    quant_only = [flag for flag, value in (("--model", args.model), ("--iterations", args.iterations),
                                           ("--input-type", args.input_type), ("--no-loop", args.no_loop),
                                           ("--calibration-images", args.calibration_images),
                                           ("--data-dir", args.data_dir)) if value]
    if quant_only and not args.quant:
        parser.error(f"{quant_only[0]} needs --quant")
    if args.unrolled and args.preset:
        parser.error("--unrolled compares with a FILE; --preset makes its own unrolled file")
    if args.input_size and args.file:
        parser.error("--input-size is for --preset: a .tflite file has its own input size")
    if args.quant:
        trained = None
        if args.model:
            try:
                trained = preset_model(args.model, args.preset)
            except (FileNotFoundError, ValueError) as error:
                print(f"error: --model: {error}", file=sys.stderr)
                return 2
        try:
            table, rows = run_quant(args, trained)
        except (ValueError, OSError) as error:  # a dataset missing, a combination the converter refuses
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(table)
        if args.output:
            command = "python export/measure_latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
            setup = (f"{platform.machine()}, LiteRT default CPU delegate (XNNPACK), batch 1, median of "
                     f"{args.repeats}, the files timed in turns\n")
            write_result_files(args.output, command, setup + table, rows)
        return 0
    for path in filter(None, [args.file, args.unrolled]):
        problem = "does not exist" if not Path(path).is_file() else \
            "is not a .tflite file" if Path(path).suffix != ".tflite" else None
        if problem:
            print(f"error: {path} {problem}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as work:
        loop_file, unrolled_file, unrolled_anytime = args.file, args.unrolled, None
        if args.preset:
            size = args.input_size or DATASETS[PRESET_DATASET[args.preset]].image_size
            loop_file, unrolled_file, unrolled_anytime = preset_files(args.preset, size, work)
        try:
            rows = measure(loop_file, unrolled_file, args.threads, args.repeats, unrolled_anytime)
        except ValueError as error:  # not a loop file
            print(f"error: {error}", file=sys.stderr)
            return 2
    table = format_rows(rows)
    print(table)
    if args.output:
        command = "python export/measure_latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
        setup = f"{platform.machine()}, LiteRT default CPU delegate, batch 1, median of {args.repeats}\n"
        write_result_files(args.output, command, setup + table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
