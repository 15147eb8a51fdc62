import dataclasses
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from itnet_keras.augment import Augmentation, sample_seed
from itnet_keras.datasets import DATASETS, load_split
from itnet_keras.pipeline import SyncEpoch, label_dtype, make_dataset

BUILTIN = dict(size=32, num_images=20)


# ---------------------------------------------------------------- augmentation


def _label_coded(rng, shape, block=2):
    """A random label constant on `block` x `block` tiles and an image that encodes it."""
    small = rng.integers(0, 12, (shape[0] // block, shape[1] // block), dtype=np.uint8)
    label = np.kron(small, np.ones((block, block), np.uint8))
    image = np.stack([label * 20, 255 - label * 20, np.full_like(label, 7)], axis=-1)
    return image, label


@pytest.mark.parametrize("scale", [1, 2])
def test_augmentation_keeps_image_and_label_aligned(scale):
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(48, 64), train_crop=(40, 56))
    augmentation = Augmentation(spec, training=True, scale=scale)
    image, label = _label_coded(np.random.default_rng(0), (48, 64), block=2 * scale)
    seen = set()
    for index in range(40):
        out_image, out_label = augmentation(image, label, sample_seed(0, 0, index))
        assert out_image.dtype == np.float32 and out_image.shape == (40 // scale, 56 // scale, 3)
        assert out_label.shape == (40 // scale, 56 // scale)
        np.testing.assert_array_equal(np.rint(out_image[..., 0] * 255), out_label * 20)
        seen.add(out_label.tobytes())
    assert len(seen) > 10  # flips and crop positions vary


@pytest.mark.parametrize("scale", [3, 4])
def test_a_downscaled_label_comes_from_the_pixel_under_the_images_centre(scale):
    """Image and label resized alike: the label's source pixel is the one nearest the centre
    of the image's bilinear sample (OpenCV's plain nearest took the first pixel of each
    `scale` x `scale` cell, (scale - 1) / 2 source pixels up and left of the image)."""
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(96, 120), train_crop=None)
    column = np.broadcast_to(np.arange(120, dtype=np.uint8), (96, 120))
    image = np.stack([column * 2, column * 2, column * 2], axis=-1)  # the label's source column, doubled
    out_image, label = Augmentation(spec, training=False, scale=scale)(image, column.copy(), sample_seed(0, 0, 0))
    centre = np.rint(out_image[..., 0] * 255) / 2
    assert label.shape == (96 // scale, 120 // scale)
    assert np.abs(label - centre).max() <= 0.5


def test_augmentation_without_crop_flips_both_or_neither():
    spec = DATASETS["builtin"]
    augmentation = Augmentation(spec, training=True)
    image, label = _label_coded(np.random.default_rng(1), (64, 64))
    flipped = 0
    for index in range(30):
        out_image, out_label = augmentation(image, label, sample_seed(3, 1, index))
        np.testing.assert_array_equal(np.rint(out_image[..., 0] * 255), out_label * 20)
        if np.array_equal(out_label, label[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out_label, label)
    assert 5 < flipped < 25


def test_cityscapes_resize_and_normalization():
    spec = dataclasses.replace(DATASETS["cityscapes"], image_size=(32, 64))
    image, label = _label_coded(np.random.default_rng(2), (64, 128))
    for training in (False, True):
        out_image, out_label = Augmentation(spec, training)(image, label, 5)
        assert out_image.shape == (32, 64, 3) and out_label.shape == (32, 64)
        np.testing.assert_allclose((out_image[..., 0] + 1) * 127.5, out_label * 20, atol=1e-3)
        assert -1 <= out_image.min() and out_image.max() <= 1


def test_evaluation_is_not_augmented():
    spec = DATASETS["builtin"]
    image, label = _label_coded(np.random.default_rng(3), (64, 64))
    out_image, out_label = Augmentation(spec, training=False)(image, label, 123)
    np.testing.assert_array_equal(out_label, label)
    np.testing.assert_allclose(out_image, image / np.float32(255), rtol=1e-6)


def test_augmentation_independent_of_thread_and_order():
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(48, 64), train_crop=(40, 56))
    augmentation = Augmentation(spec, training=True)
    image, label = _label_coded(np.random.default_rng(4), (48, 64))
    seeds = [sample_seed(7, 2, i) for i in range(64)]
    serial = [augmentation(image, label, s)[1] for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda s: augmentation(image, label, s)[1], seeds[::-1]))[::-1]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_crop_and_scale_errors():
    with pytest.raises(ValueError, match=r"crop 400x480 for camvid: expected at most"):
        Augmentation(DATASETS["camvid"], training=True, crop=(400, 480))
    with pytest.raises(ValueError, match=r"scale 7 for camvid"):
        Augmentation(DATASETS["camvid"], training=False, scale=7)


def test_paper_recipe_is_byte_identical_to_before_the_strong_recipe(camvid_root):
    """sha256 of 4 augmented CamVid training samples (seed 7, epoch 2), recorded with the
    code before `--augment` existed (albumentations 2.0.8): the default must not move. Scale
    4's was recorded again when the labels' resize moved to pixel centres (scale 1 has no resize)."""
    split = load_split("camvid", "train", data_dir=camvid_root, limit=4)
    expected = {1: "941fca48e6a5f9d2771b1d1ae3bd33fdc1e9650c11ae4e03796090f5990e4083",
                4: "88a68b51fbe4b134ca38c8fa42e26853d089d1665c32c5a9f5a5c4fe9b040e50"}
    for scale, digest in expected.items():
        augmentation, sha = Augmentation(split.spec, training=True, scale=scale, recipe="paper"), hashlib.sha256()
        for i in range(4):
            image, label = augmentation(*split[i], sample_seed(7, 2, i))
            sha.update(image.tobytes())
            sha.update(label.tobytes())
        assert sha.hexdigest() == digest, f"scale {scale}"


def _stripes(shape, period, values=(2, 7)):
    """Horizontal label stripes `period` rows high, alternating `values`, and a matching image."""
    rows = np.where((np.arange(shape[0]) // period) % 2, values[1], values[0]).astype(np.uint8)
    label = np.repeat(rows[:, None], shape[1], axis=1)
    return np.stack([label * 20, 255 - label * 20, np.full_like(label, 7)], axis=-1), label


def _interior_runs(column, ignore):
    """Lengths of the runs of equal values in `column`, without the first and last run and
    without runs of `ignore` (padding)."""
    edges = np.flatnonzero(np.diff(column)) + 1
    runs = np.split(column, edges)[1:-1]
    return [len(r) for r in runs if r[0] != ignore]


def test_strong_recipe_labels_stay_classes_or_ignore_and_scale_varies_object_size():
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(96, 64), train_crop=(80, 56))
    augmentation = Augmentation(spec, training=True, recipe="strong")
    image, label = _stripes((96, 64), period=8)
    heights, padded = [], 0
    for index in range(60):
        out_image, out_label = augmentation(image, label, sample_seed(0, 0, index))
        assert out_image.shape == (80, 56, 3) and out_label.shape == (80, 56)
        # nearest only: the two stripe values, and the ignore value where padded (linear
        # resampling would create the values between 2 and 7)
        assert set(np.unique(out_label)) <= {2, 7, spec.ignore_label}
        padded += bool((out_label == spec.ignore_label).any())
        runs = _interior_runs(out_label[:, 28], spec.ignore_label)
        if runs:
            heights.append(np.median(runs))
    # stripes 8 rows high become 4 (x0.5) to 16 (x2.0) rows high
    assert min(heights) <= 5.5 and max(heights) >= 12 and 4 <= min(heights) and max(heights) <= 16.5
    assert padded > 5  # scales below the crop size are padded with the ignore value


def test_strong_recipe_on_camvid_keeps_label_values_and_photometric_changes():
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(48, 64), train_crop=(40, 56))
    image, label = _label_coded(np.random.default_rng(5), (48, 64), block=4)
    paper = Augmentation(spec, training=True)
    strong = Augmentation(spec, training=True, recipe="strong")
    changed = 0
    for index in range(30):
        out_image, out_label = strong(image, label, sample_seed(1, 0, index))
        assert out_label.dtype == np.uint8 and set(np.unique(out_label)) <= set(range(12))
        assert out_image.dtype == np.float32 and 0 <= out_image.min() and out_image.max() <= 1
        # pixels left at the paper's colour coding: fewer when brightness/contrast/hue/gamma act
        changed += not np.array_equal(np.rint(out_image[..., 0] * 255)[out_label < 11],
                                      (out_label * 20)[out_label < 11])
    assert changed > 15
    paper_image, paper_label = paper(image, label, 3)
    np.testing.assert_array_equal(np.rint(paper_image[..., 0] * 255), paper_label * 20)


def test_strong_recipe_is_deterministic_per_seed_and_thread():
    spec = dataclasses.replace(DATASETS["camvid"], image_size=(48, 64), train_crop=(40, 56))
    augmentation = Augmentation(spec, training=True, recipe="strong")
    image, label = _label_coded(np.random.default_rng(6), (48, 64))
    seeds = [sample_seed(7, 2, i) for i in range(32)]
    serial = [augmentation(image, label, s) for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda s: augmentation(image, label, s), seeds[::-1]))[::-1]
    again = Augmentation(spec, training=True, recipe="strong")
    for seed, (a_image, a_label), (b_image, b_label) in zip(seeds, serial, parallel):
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_label, b_label)
        np.testing.assert_array_equal(again(image, label, seed)[0], a_image)
    assert len({a.tobytes() for a, _ in serial}) == len(seeds)


def test_recipe_error_names_the_value():
    with pytest.raises(ValueError, match=r"augmentation recipe 'heavy': expected one of paper, strong"):
        Augmentation(DATASETS["camvid"], training=True, recipe="heavy")


# ---------------------------------------------------------------- batches


def test_batches_shapes_and_dtypes():
    train = make_dataset("builtin", "train", batch_size=8, training=True, **BUILTIN)
    assert len(train) == 2 and train.spec.num_classes == 4  # 20 // 8: last batch dropped
    images, labels = train[1]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (8, 32, 32) and labels.dtype == np.uint8  # every label id fits a byte
    assert label_dtype(dataclasses.replace(train.spec, ignore_label=256)) == np.int32
    assert 0 <= images.min() and images.max() <= 1
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
    val = make_dataset("builtin", "val", batch_size=8, **BUILTIN)
    assert len(val) == 3 and val[2][0].shape == (4, 32, 32, 3)  # last batch kept
    with pytest.raises(IndexError):
        val[3]


def test_camvid_batches(tmp_path, write_camvid):
    """CamVid's sizes: 480x352 crops of 480x360 images, halved at --scale 2. On files written
    here, so that it runs wherever the tests do (`test_camvid_shared_copy` reads the real copy)."""
    camvid_root = write_camvid(tmp_path / "camvid", counts={"train": 8, "val": 4}, size=(360, 480))
    train = make_dataset("camvid", "train", data_dir=camvid_root, batch_size=4, training=True,
                         limit=8, scale=2)
    images, labels = train[0]
    assert images.shape == (4, 176, 240, 3) and labels.shape == (4, 176, 240)
    assert labels.max() <= 11
    val = make_dataset("camvid", "val", data_dir=camvid_root, batch_size=4, limit=4, scale=2)
    assert val[0][0].shape == (4, 180, 240, 3)
    full = make_dataset("camvid", "train", data_dir=camvid_root, batch_size=2, training=True,
                        limit=2)
    assert full[0][0].shape == (2, 352, 480, 3)


def test_cityscapes_batches(tmp_path, write_cityscapes):
    root = write_cityscapes(tmp_path / "cityscapes")
    data = make_dataset("cityscapes", "train", data_dir=root, batch_size=2, training=True,
                        scale=16)
    images, labels = data[0]
    assert images.shape == (2, 32, 64, 3) and labels.shape == (2, 32, 64)
    assert -1 <= images.min() < 0 < images.max() <= 1


def test_deterministic_per_seed_and_epoch():
    def batch(seed, epoch):
        dataset = make_dataset("builtin", "train", batch_size=4, training=True, seed=seed,
                               **BUILTIN)
        dataset.epoch = epoch
        return dataset[1]

    first, again = batch(0, 3), batch(0, 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], batch(0, 4)[1])
    assert not np.array_equal(first[1], batch(1, 3)[1])


def test_epoch_advances_on_epoch_end():
    dataset = make_dataset("builtin", "train", batch_size=4, training=True, **BUILTIN)
    dataset.on_epoch_end()  # Keras's reset before the first epoch: not an epoch
    assert dataset.epoch == 0
    dataset.on_epoch_begin()
    dataset.on_epoch_end()
    assert dataset.epoch == 1
    SyncEpoch(dataset).on_epoch_begin(5)
    assert dataset.epoch == 5


def test_output_names_give_one_target_per_output():
    names = ["output_0", "output_1", "output_2"]
    dataset = make_dataset("builtin", "val", batch_size=4, output_names=names, **BUILTIN)
    images, targets = dataset[0]
    assert list(targets) == names
    for name in names:
        np.testing.assert_array_equal(targets[name], targets["output_0"])
        assert targets[name].shape == (4, 32, 32)


def test_padded_last_batch_adds_nothing_to_the_metrics():
    """`pad_last`: the last of 20 images at batch 8 is filled up with 4 black, ignore-labelled
    images; the split's mIoU under `model.evaluate` is the same as without padding."""
    import keras

    from itnet_keras.losses import MaskedCrossEntropy
    from itnet_keras.metrics import SegmentationMeanIoU

    kwargs = dict(batch_size=8, size=16, num_images=20)
    plain, padded = (make_dataset("builtin", "val", pad_last=pad, **kwargs) for pad in (False, True))
    (last_images, last_labels), (images, labels) = plain[2], padded[2]
    assert len(padded) == 3 and images.shape[0] == labels.shape[0] == 8
    np.testing.assert_array_equal(images[:4], last_images)
    np.testing.assert_array_equal(labels[:4], last_labels)
    assert not images[4:].any() and (labels[4:] == 255).all()
    assert len(make_dataset("builtin", "train", training=True, pad_last=True, **kwargs)[1][0]) == 8  # dropped

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    model.compile("adam", MaskedCrossEntropy(255), metrics=[SegmentationMeanIoU(4, 255, name="miou")])
    mious = [model.evaluate(data, verbose=0, return_dict=True)["miou"] for data in (plain, padded)]
    assert 0 < mious[0] == mious[1]


def test_too_few_samples_for_a_training_batch():
    with pytest.raises(ValueError, match=r"builtin train has 4 samples: expected at least "
                                         r"batch_size 8"):
        make_dataset("builtin", "train", batch_size=8, training=True, size=16, num_images=4)


def test_jax_backend_fit_trains_each_epoch_on_its_own_batches_with_any_workers():
    """Under JAX, 3 epochs with 1 and with 2 worker threads end with the same weights (was:
    with 2, Keras' prefetching queue handed each epoch batches left over from the one before,
    made with the previous epoch's shuffle and augmentation, and a resume diverged)."""
    code = (
        "import keras, numpy as np\n"
        "from itnet_keras.pipeline import SyncEpoch, make_dataset\n"
        "weights = []\n"
        "for workers in (1, 2):\n"
        "    keras.utils.set_random_seed(0)\n"
        "    data = make_dataset('builtin', 'train', batch_size=4, training=True, size=16,"
        " num_images=16, workers=workers)\n"
        "    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, padding='same')])\n"
        "    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))\n"
        "    history = model.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[SyncEpoch(data)])\n"
        "    weights.append(model.get_weights())\n"
        "print(keras.backend.backend(), len(history.history['loss']), data.epoch,"
        " all(np.array_equal(a, b) for a, b in zip(*weights)))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["jax", "3", "3", "True"]


def test_the_input_benchmark_skips_a_dataset_it_cannot_find_in_one_table_row(tmp_path, capsys):
    """A CamVid row without CamVid says why in its own cells, its options as the measured rows
    write them (was: the raw dict, and the error's line breaks inside the markdown table)."""
    from itnet_keras.lab.bench_input import run
    configs = [("builtin", dict(scale=2)), ("camvid", dict(scale=2))]
    table = run(repeats=1, max_batches=1, batch_size=2, configs=configs, data_dir=tmp_path / "none")
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(configs)  # one line each
    measured, skipped = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert measured[:2] == ["builtin", "scale=2"] and float(measured[-1]) > 0
    assert skipped[:2] == ["camvid", "scale=2"] and skipped[2].startswith("skipped: ")
    assert str(tmp_path / "none") in skipped[2]
