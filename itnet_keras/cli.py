"""Command-line value checks shared by the commands (argparse `type=` functions). A leaf:
it imports nothing of the package."""

import argparse
import math


def description(doc):
    """A command's `--help` description: the first paragraph of its module docstring on one
    line, without a closing colon (the usage that follows it in the docstring is argparse's)."""
    return " ".join(doc.strip().split("\n\n")[0].split()).rstrip(":")


def parse_size(text):
    """'360x480' -> (360, 480): height x width (an argparse type; the error names the value)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 360x480") from None
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 8x8")
    return height, width


def crop_size(text):
    """None, or the (height, width) of a HEIGHTxWIDTH `--crop` (a ValueError names the flag)."""
    try:
        return None if text is None else parse_size(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"--crop {error}") from None


def positive(kind):
    """An argparse type: `kind(text)`, which must be finite and > 0 (the error names the value)."""
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


# Where a command reads a dataset without --data-dir (`datasets.default_data_dir`).
DATA_DIR_HELP = ("the dataset's folder (default: data/<dataset> in the repository, where download puts it, or "
                 "../shared/data/<dataset> beside the repository where that exists)")
SEEDS = range(2**32)  # what every command's --seed accepts (numpy's and Keras' seed range)


def seed(text):
    """An argparse type: a random seed, an integer in `SEEDS`."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value not in SEEDS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer in 0..{SEEDS[-1]}")
    return value


def boolean(text):
    """An argparse type: true/1/yes or false/0/no."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")


def table_path(text):
    """An argparse type: where a results table goes (`files.write_result_files`), its data
    beside it as .json; so not a .json name itself, which the data would overwrite."""
    if text.lower().endswith(".json"):
        raise argparse.ArgumentTypeError(f"{text!r}: the table's data goes beside it as .json, which would "
                                         "overwrite it; give a .md name")
    return text
