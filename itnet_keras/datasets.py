"""Dataset readers: CamVid (SegNet layout), Cityscapes (official layout), built-in shapes.

`load_split(name, split)` returns a `Split`: the dataset's `DatasetSpec`, its samples,
and `split[i] -> (image uint8 HxWx3, label uint8 HxW)`. Every label is checked when it
is read; any problem raises `DatasetError` naming the file and the value at fault.
`check_split` runs those checks over a whole split up front (training does, before its
first step).
"""

import concurrent.futures
import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np

from itnet_keras.builtin_data import BUILTIN_NUM_IMAGES, FRAME_COLORS, SPLITS, builtin_arrays
from itnet_keras.console import Progress
from itnet_keras.image_files import (DatasetError, check_label, display_path, read_image, read_label,
                                     verify_image)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    ignore_label: int  # pixels with this label count in neither the loss nor mIoU
    class_names: tuple
    colors: tuple  # RGB of each class in masks and figures: the dataset's own palette
    image_size: tuple  # (h, w) of the network input after resizing, before cropping
    train_crop: tuple | None  # (h, w) random training crop, or None
    normalization: tuple  # (scale, offset): pixel * scale + offset
    # y_0 of the area under mIoU over MACs (SPEC s.5); None: the split's majority-class mIoU
    chance_miou: float | None = None


DATASETS = {
    "camvid": DatasetSpec(
        "camvid", 11, 11,
        ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol",
         "fence", "car", "pedestrian", "bicyclist"),
        # CamVid's colour-coded labels (Brostow et al.), for these 11 classes
        ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
         (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
        (360, 480), (352, 480), (1 / 255, 0.0), chance_miou=0.00828),  # the paper's (SPEC s.5)
    "cityscapes": DatasetSpec(
        "cityscapes", 19, 255,
        ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light",
         "traffic_sign", "vegetation", "terrain", "sky", "person", "rider", "car",
         "truck", "bus", "train", "motorcycle", "bicycle"),
        # cityscapesScripts labels.py, the train ids' colours
        ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
         (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
         (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
        (512, 1024), None, (1 / 127.5, -1.0)),
    "builtin": DatasetSpec(
        "builtin", 4, 255, ("background", "red-framed shape", "green-framed shape", "blue-framed shape"),
        ((0, 0, 0), *(tuple(int(v) for v in frame) for frame in FRAME_COLORS)),  # black, then the frames' own
        (64, 64), None, (1 / 255, 0.0)),
}

# cityscapesScripts labels.py: labelId -> trainId (19 classes), everything else ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_MAX_LABEL_ID = 33
CITYSCAPES_LUT = np.full(256, 255, np.uint8)
CITYSCAPES_LUT[list(CITYSCAPES_TRAIN_IDS)] = list(CITYSCAPES_TRAIN_IDS.values())

@dataclasses.dataclass
class Split:
    """One split of a dataset: `len(split)` samples, `split[i] -> (image, label)`."""

    spec: DatasetSpec
    split: str
    samples: list  # (image_path, label_path) pairs, or indices for the built-in data
    read: Callable  # sample -> (image uint8 HxWx3, label uint8 HxW)
    check: Callable | None = None  # sample -> None, raising DatasetError (None: nothing to check)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.read(self.samples[index])


def get_spec(name):
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def spec_with_classes(num_classes, model="the model"):
    """The one dataset with `num_classes` classes (the dataset of `model`, a path, when none
    is named)."""
    matches = [spec for spec in DATASETS.values() if spec.num_classes == num_classes]
    if len(matches) != 1:
        raise DatasetError(f"{model} has {num_classes} classes, which names no single dataset: "
                           "pass --data to name its dataset")
    return matches[0]


def default_data_dir(name):
    """`../shared/data/<name>` beside the project if present, else `data/<name>`."""
    shared = PROJECT_ROOT.parent / "shared" / "data" / name
    return shared if shared.is_dir() else PROJECT_ROOT / "data" / name


# ---------------------------------------------------------------- reading and checking


def _checked_label(label_path, image_size, image_path, spec, root, label_ids):
    """The label, checked against its image's (h, w) and the dataset's ids (`label_ids`:
    Cityscapes' labelIds, mapped to train ids after)."""
    label = read_label(label_path, root)
    if label.shape != image_size:
        raise DatasetError(f"size mismatch: image {display_path(image_path, root)} is "
                           f"{image_size[1]}x{image_size[0]} but label "
                           f"{display_path(label_path, root)} is {label.shape[1]}x{label.shape[0]}")
    if label_ids:
        check_label(label, CITYSCAPES_MAX_LABEL_ID, None, label_path, root, "labelId")
    else:
        check_label(label, spec.num_classes - 1, spec.ignore_label, label_path, root)
    return label


def read_pair(image_path, label_path, spec, root, label_map=None):
    """Read, check and (for Cityscapes) map one image/label pair."""
    image = read_image(image_path, root)
    label = _checked_label(label_path, image.shape[:2], image_path, spec, root, label_map is not None)
    return image, label if label_map is None else label_map[label]


def check_pair(image_path, label_path, spec, root, label_map=None):
    """What `read_pair` checks, without decoding the image (`verify_image`)."""
    _checked_label(label_path, verify_image(image_path, root), image_path, spec, root, label_map is not None)


def check_split(split, workers=None, large=200):
    """Check every sample of `split` (readability, image and label size, label range) in
    `workers` threads; raises the `DatasetError` of the first bad sample in split order.

    Splits of `large` samples or more show their progress (`console.Progress`).
    """
    if split.check is None:
        return
    total = len(split.samples)
    bar = Progress(total, f"checking {split.spec.name} {split.split}", unit="images and labels") \
        if total >= large else None
    pool = concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))
    try:
        for future in [pool.submit(split.check, sample) for sample in split.samples]:
            future.result()
            if bar:
                bar.update()
    finally:
        if bar:
            bar.close()
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- CamVid


def camvid_samples(root, split):
    """(image, label) paths from `<split>.txt`, whose `/SegNet/CamVid/` prefix is dropped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CamVid folder {root} not found: expected the SegNet layout "
                           f"(train/, trainannot/, train.txt, ...); get it with "
                           f"`python -m itnet_keras.download camvid --output {root}`")
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"missing list file {display_path(list_file, root)} for split {split!r}")
    try:
        text = list_file.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise DatasetError(f"cannot read list file {display_path(list_file, root)}: {error}") from None
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        paths = line.split()
        if len(paths) != 2:
            raise DatasetError(f"{display_path(list_file, root)} line {number}: {line!r}: "
                               f"expected 'image_path label_path'")
        pair = tuple(root / p.split("CamVid/")[-1].lstrip("/") for p in paths)
        for path in pair:
            if not path.is_file():
                raise DatasetError(f"missing file {display_path(path, root)} "
                                   f"(listed in {display_path(list_file, root)} line {number})")
        samples.append(pair)
    if not samples:
        raise DatasetError(f"list file {display_path(list_file, root)} is empty: "
                           f"expected lines 'image_path label_path'")
    return samples


# ---------------------------------------------------------------- Cityscapes


def cityscapes_samples(root, split):
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` with their `gtFine` labelIds."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Cityscapes folder {root} not found: expected leftImg8bit/ and gtFine/ from "
                           "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unzipped into it (they need "
                           "a login at https://www.cityscapes-dataset.com, so `download` cannot get them); "
                           "pass the folder with --data-dir")
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"no images in {display_path(root / 'leftImg8bit' / split, root)}: "
                           f"expected leftImg8bit/{split}/<city>/<name>_leftImg8bit.png")
    samples = []
    for image in images:
        name = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / image.parent.name / f"{name}_gtFine_labelIds.png"
        if not label.is_file():
            raise DatasetError(f"missing label {display_path(label, root)} "
                               f"for image {display_path(image, root)}")
        samples.append((image, label))
    return samples


# ---------------------------------------------------------------- entry point


def load_split(name, split, data_dir=None, limit=None, *, size=64, num_images=None,
               data_seed=0):
    """The `split` of dataset `name`; `size`, `num_images` and `data_seed` are built-in only.

    CamVid is decoded once and kept in memory (its check is that read, so checking first
    costs nothing overall); Cityscapes is read lazily and checked without decoding images.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} of {name}: expected one of {SPLITS}")
    if name == "builtin":
        size = (size, size) if isinstance(size, int) else tuple(size)
        count = num_images or BUILTIN_NUM_IMAGES[split]
        images, labels = builtin_arrays(split, size, count, data_seed)
        spec = dataclasses.replace(spec, image_size=size)
        samples = list(range(count))[:limit]
        return Split(spec, split, samples, lambda i: (images[i], labels[i]))
    root = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if name == "camvid":
        samples = camvid_samples(root, split)[:limit]
        read = functools.lru_cache(maxsize=None)(
            lambda pair: read_pair(*pair, spec, root))
        return Split(spec, split, samples, read, check=read)
    samples = cityscapes_samples(root, split)[:limit]
    read = lambda pair: read_pair(*pair, spec, root, CITYSCAPES_LUT)  # noqa: E731
    return Split(spec, split, samples, read, check=lambda pair: check_pair(*pair, spec, root, CITYSCAPES_LUT))
