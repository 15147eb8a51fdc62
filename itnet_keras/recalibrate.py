"""Recalibrate a saved ItNet's batch norms into a new file (`batch_norm.recalibrate`):

    python -m itnet_keras.recalibrate MODEL.keras --output NEW.keras [--batches 50]

The training batches are those `fit` makes (its crops, flips and recipe) of the dataset,
scale, crop, recipe, batch size, seed and limit that the model's run recorded (`config.json`
beside the model), else of the dataset with the model's class count at scale 1 with
`fit`'s defaults; flags override them. Only the moving statistics change; the new file
has no optimizer state and is written atomically.
"""

import argparse
import sys
from pathlib import Path

from itnet_keras.cli import DATA_DIR_HELP, crop_size, description, positive, seed
from itnet_keras.config import FitConfig
from itnet_keras.console import add_verbose_flag, progress, quiet_startup
from itnet_keras.presets import AUGMENT_RECIPES, DATASET_NAMES

FIT_DEFAULTS = FitConfig()  # what a model without a recorded training gets, as `fit` would


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.recalibrate", description=description(__doc__))
    parser.add_argument("model", help="a saved .keras model")
    parser.add_argument("--output", required=True, help="the recalibrated model, a .keras file (may be MODEL itself)")
    parser.add_argument("--batches", type=positive(int), default=50,
                        help="training batches to average the statistics over (default: 50)")
    parser.add_argument("--data", choices=DATASET_NAMES, help="default: the one its training recorded")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--scale", type=positive(int), help="default: the training scale recorded beside the model")
    parser.add_argument("--crop", help="HEIGHTxWIDTH (default: the recorded one, else the dataset's)")
    parser.add_argument("--augment", choices=AUGMENT_RECIPES,
                        help=f"default: the recorded recipe, else {FIT_DEFAULTS.augment}")
    parser.add_argument("--batch-size", type=positive(int),
                        help=f"default: the recorded one, else {FIT_DEFAULTS.batch_size}")
    parser.add_argument("--limit", type=positive(int),
                        help="only the first LIMIT training images (default: the recorded limit)")
    parser.add_argument("--seed", type=seed, help="shuffle and augmentation seed (default: the recorded one, "
                        f"else {FIT_DEFAULTS.seed})")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.batch_norm import recalibrate, training_images  # noqa: E402
from itnet_keras.evaluate import data_that_fits, evaluation_inputs, load_itnet, training_record  # noqa: E402
from itnet_keras.files import atomic_path, check_writable  # noqa: E402
from itnet_keras.pipeline import make_dataset  # noqa: E402


def check_output(path):
    """`--output` must be a .keras file in an existing folder."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"--output {path}: expected a file name ending in .keras")
    if not path.parent.is_dir():
        raise ValueError(f"--output {path}: the folder {path.parent} does not exist")
    try:  # before the work, not after it
        check_writable(path.parent)
    except OSError as error:
        raise ValueError(f"--output {path}: cannot write into {path.parent} ({error.strerror or error})") from None
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    try:
        output = check_output(args.output)
        model = load_itnet(args.model)
        data, scale = evaluation_inputs(model, args.model, args.data, args.scale)
        record = training_record(args.model) or {}
        crop = crop_size(args.crop or record.get("crop"))
        flags = {"scale": args.scale, "crop": args.crop, "batch_size": args.batch_size}
        train = data_that_fits(args.model, flags, lambda: make_dataset(
            data, "train", data_dir=args.data_dir, training=True, scale=scale, crop=crop,
            augment=args.augment or record.get("augment", FIT_DEFAULTS.augment),
            batch_size=args.batch_size or record.get("batch_size", FIT_DEFAULTS.batch_size),
            seed=record.get("seed", FIT_DEFAULTS.seed) if args.seed is None else args.seed,
            limit=args.limit or record.get("limit")))
        recalibrate(model, progress(training_images(train, args.batches), "batch-norm recalibration",
                                    total=args.batches, unit="batches"))
        with atomic_path(output, ".tmp.keras") as tmp:
            model.save(tmp)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{output}: the batch norms' moving statistics of {args.model}, re-estimated over {args.batches} "
          f"training batches of {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
