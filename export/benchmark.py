"""Latency per output under LiteRT: the loop file (`anytime`, and `encode` + `step` /
`finish` as an app drives it), and all N outputs of the loop file beside the unrolled file.

    python export/benchmark.py FILE.tflite [--unrolled UNROLLED.tflite] [--threads 1 2] [--repeats 5]
    python export/benchmark.py --preset camvid_shared [--input-size 360x480] [--output docs/latency.md]

With `--preset` the files are converted first (float32, random weights: latency does not
depend on them): the loop file, the unrolled file, and unrolled graphs of each output n
(the per-output baselines). Batch 1, LiteRT's default CPU delegate, median of `--repeats`
calls.
See `itnet_keras.export.latency` for what each column measures.
"""

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.costs import parse_size
from itnet_keras.datasets import DATASETS
from itnet_keras.presets import PRESET_DATASET


def build_parser():
    parser = argparse.ArgumentParser(prog="python export/benchmark.py", description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", help="a loop .tflite file from export/convert.py")
    parser.add_argument("--unrolled", help="the unrolled .tflite file to compare with")
    parser.add_argument("--preset", choices=sorted(PRESET_DATASET), help="convert this preset first")
    parser.add_argument("--input-size", type=parse_size)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="also write the table (markdown) and OUTPUT.json there")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.evaluate import write_result_files  # noqa: E402
from itnet_keras.export.latency import measure, preset_files  # noqa: E402


def format_rows(rows):
    """One table per thread count: ms per output n, and each path over its baseline."""
    lines = []
    for row in rows:
        unrolled, with_state = row.get("unrolled_s"), row.get("unrolled_state_s")
        paths = (("loop `anytime`", row["anytime_s"]), ("app, `finish` last", row["finish_s"]),
                 ("app, `step` only", row["step_s"]))
        header = "| output n |" + "".join(f" {name} ms |" + (" / unrolled |" if unrolled else "") for name, _ in paths)
        if unrolled:
            header += " unrolled ms | unrolled + state ms | `step` only / unrolled + state |"
        lines += [f"\n{row['threads']} thread(s):\n", header, "|" + "---:|" * (header.count("|") - 1)]
        for i in range(len(row["anytime_s"])):
            line = f"| {i + 1} |"
            for _, seconds in paths:
                line += f" {seconds[i] * 1e3:.1f} |" + (f" {seconds[i] / unrolled[i]:.2f} |" if unrolled else "")
            if unrolled:
                line += (f" {unrolled[i] * 1e3:.1f} | {with_state[i] * 1e3:.1f} |"
                         f" {row['step_s'][i] / with_state[i]:.2f} |")
            lines.append(line)
        lines.append(f"\nall N outputs (`outputs`, N full-resolution maps): loop {row['loop_outputs_s'] * 1e3:.1f} ms")
        if row["unrolled_outputs_s"] is not None:
            unrolled = row["unrolled_outputs_s"]
            lines[-1] += (f", unrolled {unrolled * 1e3:.1f} ms, loop / unrolled = "
                          f"{row['loop_outputs_s'] / unrolled:.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_startup(args.verbose)
    if (args.file is None) == (args.preset is None):
        parser.error("give a .tflite file or --preset, not both")
    with tempfile.TemporaryDirectory() as work:
        loop_file, unrolled_file, unrolled_anytime = args.file, args.unrolled, None
        if args.preset:
            size = args.input_size or DATASETS[PRESET_DATASET[args.preset]].image_size
            loop_file, unrolled_file, unrolled_anytime = preset_files(args.preset, size, work)
        elif not Path(loop_file).is_file():
            print(f"error: {loop_file} does not exist", file=sys.stderr)
            return 2
        rows = measure(loop_file, unrolled_file, args.threads, args.repeats, unrolled_anytime)
    table = format_rows(rows)
    print(table)
    if args.output:
        command = "python export/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
        setup = f"{platform.machine()}, LiteRT default CPU delegate, batch 1, median of {args.repeats}\n"
        write_result_files(args.output, command, setup + table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
