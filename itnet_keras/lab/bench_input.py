"""Input pipeline throughput: training images/s of `make_dataset`, as a markdown table.

    python -m itnet_keras.lab.bench_input [--repeats 5] [--workers 1] [--max-batches 64] [--data-dir data/camvid]

Each run reads one (training) epoch, or its first `--max-batches` batches. The first run
of a dataset decodes the files ("cold"; CamVid is then cached in memory); the median is
over the following runs. Compare with the training images/s of the same settings.
"""

import argparse
import statistics
import time

from itnet_keras.augment import input_size, training_crop
from itnet_keras.cli import description, positive
from itnet_keras.console import add_verbose_flag, quiet_startup
from itnet_keras.datasets import DatasetError


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.lab.bench_input", description=description(__doc__))
    parser.add_argument("--repeats", type=positive(int), default=5)
    parser.add_argument("--max-batches", type=positive(int), default=64)
    parser.add_argument("--workers", type=positive(int), default=1,
                        help="threads making each batch, as fit --workers (default: 1)")
    parser.add_argument("--batch-size", type=positive(int), default=8)
    parser.add_argument("--data-dir", help="the CamVid folder (default: ../shared/data/camvid where it exists, else data/camvid; "
                        "without CamVid there the CamVid rows are skipped)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.files import markdown_table  # noqa: E402
from itnet_keras.pipeline import make_dataset  # noqa: E402

# (dataset, make_dataset keyword arguments)
CONFIGS = [
    ("builtin", dict()),
    ("camvid", dict()),
    ("camvid", dict(augment="strong")),
    ("camvid", dict(scale=2)),
    ("camvid", dict(scale=4)),
    ("camvid", dict(scale=4, augment="strong")),
]


def images_per_second(dataset, max_batches):
    """Read up to `max_batches` batches of the current epoch in order, as `fit` does; images per second."""
    count = min(len(dataset), max_batches)
    start = time.perf_counter()
    images = sum(len(dataset[index][0]) for index in range(count))
    return images / (time.perf_counter() - start)


def bench(name, repeats=5, max_batches=64, workers=1, batch_size=8, data_dir=None, **kwargs):
    """(cold images/s, median images/s over `repeats` warm epochs, dataset); `workers` threads
    make each batch, as `fit --workers`."""
    dataset = make_dataset(name, "train", training=True, batch_size=batch_size, workers=workers,
                           data_dir=None if name == "builtin" else data_dir, **kwargs)
    cold = images_per_second(dataset, max_batches)
    warm = []
    for epoch in range(1, repeats + 1):
        dataset.epoch = epoch
        warm.append(images_per_second(dataset, max_batches))
    return cold, statistics.median(warm), dataset


def run(repeats=5, max_batches=64, workers=1, batch_size=8, configs=CONFIGS, data_dir=None):
    header = ["dataset", "options", "images (h x w)", "batch", "workers", "cold images/s",
              f"images/s (median of {repeats})"]
    rows = []
    for name, kwargs in configs:
        options = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
        try:
            cold, warm, dataset = bench(name, repeats, max_batches, workers, batch_size, data_dir, **kwargs)
        except DatasetError as error:
            reason = " ".join(str(error).split()).replace("|", "/")  # one table cell
            rows.append([name, options, f"skipped: {reason}", "", "", "", ""])
            continue
        scale = kwargs.get("scale", 1)
        h, w = training_crop(dataset.spec, kwargs.get("crop"), scale) or input_size(
            dataset.spec, scale)
        rows.append([name, options, f"{h} x {w}", batch_size, workers, f"{cold:.0f}", f"{warm:.0f}"])
    table = markdown_table(header, rows, align="lllllll")
    print(table)
    return table


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    run(args.repeats, args.max_batches, args.workers, args.batch_size, data_dir=args.data_dir)


if __name__ == "__main__":
    main()
