"""Shared fixtures: the shared CamVid copy and small synthetic datasets in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itnet_keras.datasets import CITYSCAPES_MAX_LABEL_ID

SHARED_CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"


def _write_camvid(root, counts=None, size=(36, 48), seed=0):
    """A tiny CamVid in the SegNet layout (random images, labels 0..11); returns `root`."""
    root, rng = Path(root), np.random.default_rng(seed)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(count):
            name = f"0001TP_{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / split / name)
            Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(
                root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def write_camvid():
    """`write_camvid(root, counts={"train": 3, "val": 2}, size=(h, w), seed=0) -> root`."""
    return _write_camvid


def _write_cityscapes(root, cities=("aachen", "bremen"), images_per_city=2,
                             size=(64, 128), splits=("train", "val"), seed=0):
    """Write a tiny random dataset in the official Cityscapes layout; returns `root`."""
    root, rng = Path(root), np.random.default_rng(seed)
    for split in splits:
        for city in cities:
            for i in range(images_per_city):
                name = f"{city}_{i:06d}_000019"
                image_dir = root / "leftImg8bit" / split / city
                label_dir = root / "gtFine" / split / city
                image_dir.mkdir(parents=True, exist_ok=True)
                label_dir.mkdir(parents=True, exist_ok=True)
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                label = rng.integers(0, CITYSCAPES_MAX_LABEL_ID + 1, size, dtype=np.uint8)
                Image.fromarray(image).save(image_dir / f"{name}_leftImg8bit.png")
                Image.fromarray(label).save(label_dir / f"{name}_gtFine_labelIds.png")
    return root


@pytest.fixture
def write_cityscapes():
    """`write_cityscapes(root, cities=("aachen", "bremen"), images_per_city=2, size=(64, 128),
    splits=("train", "val"), seed=0) -> root`: a tiny random Cityscapes in the official layout."""
    return _write_cityscapes


@pytest.fixture
def camvid_fixture(tmp_path):
    """A tiny synthetic CamVid at `tmp_path/camvid` (train 3, val 2, 36x48)."""
    return _write_camvid(tmp_path / "camvid")


@pytest.fixture
def camvid_root():
    """The real CamVid copy beside the project (read-only)."""
    if not (SHARED_CAMVID / "train.txt").is_file():
        pytest.skip(f"shared CamVid copy not found at {SHARED_CAMVID}")
    return SHARED_CAMVID


@pytest.fixture
def unwritable_folders(monkeypatch):
    """Every folder refuses new files, as a read-only mount would (root writes anywhere, so
    permissions cannot show it): the probe `files.check_writable` makes fails."""
    from itnet_keras import files

    def refused(**kwargs):
        raise PermissionError(13, "Permission denied", kwargs["dir"])

    monkeypatch.setattr(files.tempfile, "NamedTemporaryFile", refused)
