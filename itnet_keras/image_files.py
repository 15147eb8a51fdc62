"""Reading one dataset file, an image or a label, and checking a label's values. Any
problem raises `DatasetError` naming the file (from its dataset folder's name on) and the
value at fault. A leaf: it imports nothing of the package."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class DatasetError(ValueError):
    """A dataset file or argument is wrong; the message names it and what was expected."""


def display_path(path, root):
    """The path as shown in errors: from the dataset folder's name on."""
    try:
        return str(Path(path).relative_to(Path(root).parent))
    except ValueError:
        return str(path)


def _check_depth(image, path, root):
    """Refuse images of more than 8 bits per channel that PIL reads as one channel: its RGB
    conversion clips them at 255 (16-bit RGB files are read as 8-bit RGB, and pass)."""
    if image.mode.startswith("I") or image.mode == "F":
        raise DatasetError(f"image {display_path(path, root)} has PIL mode {image.mode} (one channel of 16 or 32 bits): "
                           "expected 8-bit RGB or grayscale; convert it to 8 bits first")


def read_image(path, root, upright=False):
    """uint8 RGB [H, W, 3]. `upright`: turned as its EXIF orientation says, as a viewer shows
    it (photos; a dataset's images are read as stored, like their labels)."""
    try:
        with Image.open(path) as image:
            _check_depth(image, path, root)
            return np.asarray((ImageOps.exif_transpose(image) if upright else image).convert("RGB"))
    except DatasetError:
        raise
    except Exception as error:  # missing, truncated, not an image
        raise DatasetError(f"cannot read image {display_path(path, root)}: {error}") from None


def verify_image(path, root):
    """(h, w) of the image at `path`, without decoding it: its header, and its chunks'
    checksums (PIL `verify`: a truncated file fails)."""
    try:
        with Image.open(path) as image:
            _check_depth(image, path, root)
            width, height = image.size
            image.verify()
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"cannot read image {display_path(path, root)}: {error}") from None
    return height, width


def read_label(path, root):
    try:
        with Image.open(path) as image:
            label = np.asarray(image)
    except Exception as error:
        raise DatasetError(f"cannot read label {display_path(path, root)}: {error}") from None
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(f"label {display_path(path, root)} has shape {label.shape} and dtype "
                           f"{label.dtype}: expected a single-channel 8-bit image")
    return label


def check_label(label, max_id, allowed, path, root, what="label"):
    """Raise unless every value of `label` is in 0..max_id or equal to `allowed`."""
    if int(label.max()) <= max_id:
        return
    values = np.unique(label)
    bad = values[(values > max_id) & (values != allowed)]
    if bad.size:
        raise DatasetError(f"{what} {int(bad[0])} in {display_path(path, root)}: expected 0..{max_id}"
                           + (f" or {allowed} (ignored)" if allowed is not None else ""))
