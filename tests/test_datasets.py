import numpy as np
import pytest
from PIL import Image

from itnet_keras.builtin_data import FRAME_COLORS, builtin_arrays
from itnet_keras.datasets import (
    CITYSCAPES_TRAIN_IDS,
    DATASETS,
    DatasetError,
    check_label,
    check_pair,
    default_data_dir,
    load_split,
)
from itnet_keras.plots import class_colors


def test_specs():
    camvid, cityscapes = DATASETS["camvid"], DATASETS["cityscapes"]
    assert (camvid.num_classes, camvid.ignore_label, camvid.image_size, camvid.train_crop) == (
        11, 11, (360, 480), (352, 480))
    assert (cityscapes.num_classes, cityscapes.ignore_label, cityscapes.image_size) == (
        19, 255, (512, 1024))
    for spec in DATASETS.values():
        assert len(spec.class_names) == spec.num_classes


# ---------------------------------------------------------------- CamVid


def test_camvid_shared_copy(camvid_root):
    assert default_data_dir("camvid") == camvid_root
    assert len(load_split("camvid", "train", camvid_root)) == 367
    assert len(load_split("camvid", "val", camvid_root)) == 101
    data = load_split("camvid", "train", camvid_root, limit=3)
    assert len(data) == 3
    for image_path, label_path in data.samples:  # list-file paths resolve into the folder
        assert image_path.parent == camvid_root / "train" and image_path.is_file()
        assert label_path.parent == camvid_root / "trainannot" and label_path.is_file()
    for i in range(3):
        image, label = data[i]
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        assert label.max() <= 11


def test_camvid_fixture_reads(camvid_fixture):
    data = load_split("camvid", "val", camvid_fixture)
    assert len(data) == 2
    image, label = data[1]
    assert image.shape == (36, 48, 3) and label.shape == (36, 48)


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_fixture_loads(tmp_path, write_cityscapes):
    root = write_cityscapes(tmp_path / "cityscapes")
    for split in ("train", "val"):
        data = load_split("cityscapes", split, root)
        assert len(data) == 4 and data.spec.num_classes == 19
        image, label = data[0]
        assert image.shape == (64, 128, 3) and label.shape == (64, 128)
        assert set(np.unique(label)) <= set(range(19)) | {255}


def test_cityscapes_label_ids_map_to_train_ids(tmp_path, write_cityscapes):
    root = write_cityscapes(tmp_path / "cityscapes", images_per_city=1,
                                    size=(2, 34))
    label_ids = np.tile(np.arange(34, dtype=np.uint8), (2, 1))  # every labelId 0..33
    data = load_split("cityscapes", "train", root)
    Image.fromarray(label_ids).save(data.samples[0][1])
    _, label = data[0]
    expected = [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(34)]
    assert label[0].tolist() == expected
    assert label[0, 7] == 0 and label[0, 26] == 13 and label[0, 33] == 18
    assert label[0, 0] == label[0, 6] == label[0, 29] == 255  # unmapped -> ignored


def test_cityscapes_errors(tmp_path, write_cityscapes):
    root = write_cityscapes(tmp_path / "cityscapes", images_per_city=1)
    data = load_split("cityscapes", "train", root)
    Image.fromarray(np.full((64, 128), 40, np.uint8)).save(data.samples[0][1])
    with pytest.raises(DatasetError, match=r"labelId 40 in cityscapes/gtFine/train/.*: "
                                           r"expected 0\.\.33"):
        data[0]
    data.samples[1][1].unlink()
    with pytest.raises(DatasetError, match=r"missing label cityscapes/gtFine/train/bremen"):
        load_split("cityscapes", "train", root)
    with pytest.raises(DatasetError, match=r"no images in cityscapes/leftImg8bit/test"):
        load_split("cityscapes", "test", root)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=rf"Cityscapes folder {missing} not found: expected leftImg8bit/ and "
                                           r"gtFine/ .* pass the folder with --data-dir"):
        load_split("cityscapes", "train", missing)


# ---------------------------------------------------------------- built-in shapes


def test_builtin_deterministic_and_complete():
    generate = builtin_arrays.__wrapped__  # bypass the cache
    images, labels = generate("train", (32, 48), 64, 0)
    again_images, again_labels = generate("train", (32, 48), 64, 0)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    assert images.shape == (64, 32, 48, 3) and images.dtype == np.uint8
    assert labels.shape == (64, 32, 48) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3, 255}
    other_images, other_labels = generate("train", (32, 48), 64, 1)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(images, other_images)
    assert not np.array_equal(labels, generate("val", (32, 48), 64, 0)[1])


def test_builtin_split():
    data = load_split("builtin", "val", size=(24, 40), num_images=10)
    assert len(data) == 10 and data.spec.image_size == (24, 40)
    assert load_split("builtin", "train", limit=5).spec.image_size == (64, 64)
    assert len(load_split("builtin", "train")) == 512
    image, label = data[3]
    assert image.shape == (24, 40, 3) and label.shape == (24, 40)


def test_builtin_colour_does_not_give_the_class():
    images, labels = builtin_arrays("train", (64, 64), 512, 0)
    for kind in (1, 2, 3):  # each class appears in dark and in bright colours
        brightness = images[labels == kind].mean(axis=-1)
        assert brightness.min() < 60 and brightness.max() > 200


def test_builtin_class_is_the_colour_of_the_frame():
    images, labels = builtin_arrays("val", (64, 64), 128, 0)
    corner = images[:, :2, :2].reshape(len(images), -1, 3).mean(axis=1)  # inside the frame
    nearest = 1 + np.argmin(((corner[:, None] - FRAME_COLORS[None]) ** 2).sum(-1), axis=1)
    for image_labels, frame_class in zip(labels, nearest):
        shapes = set(np.unique(image_labels)) - {0, 255}
        assert shapes == {frame_class}
    assert (labels[:, :4] == 0).all() and (labels[:, -4:] == 0).all()  # the frame is background
    assert len(set(nearest)) == 3


def _window(output, size=128):
    """(rows above, rows below) of the input that pixel (size/2, size/2) of the tiny preset's
    output `output` depends on, from the gradient of a random-weight model."""
    import keras
    import tensorflow as tf

    from itnet_keras import build_itnet

    keras.utils.set_random_seed(0)
    model = build_itnet("tiny", input_shape=(size, size, 3))
    image = tf.constant(np.random.default_rng(0).random((1, size, size, 3), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(image)
        total = tf.reduce_sum(model(image, training=False)[output - 1][0, size // 2, size // 2])
    rows = np.nonzero(np.abs(tape.gradient(total, image).numpy()[0]).sum(axis=(1, 2)))[0]
    return size // 2 - rows.min(), rows.max() - size // 2


def test_builtin_class_needs_more_context_than_output_1_has():
    """The frame, which gives a shape's class, is beyond output 1's window for many shape
    pixels and at its rim for most others; output 2's window holds it for all."""
    _, labels = builtin_arrays("val", (64, 64), 128, 0)
    frame = np.ones((64, 64), bool)
    frame[4:60, 4:60] = False
    shape_pixels = (labels >= 1) & (labels <= 3)

    def fraction_seeing_frame(above, below):
        sees = np.array([[frame[max(0, r - above):r + below + 1, max(0, c - above):c + below + 1].any()
                          for c in range(64)] for r in range(64)])
        return sees[None].repeat(len(labels), 0)[shape_pixels].mean()

    above, below = _window(1)
    assert above + below + 1 <= 40  # 39x39
    assert fraction_seeing_frame(above, below) < 0.7
    assert fraction_seeing_frame(above // 2, below // 2) < 0.1  # the window's inner half
    above, below = _window(2)
    assert fraction_seeing_frame(above, below) == 1.0


# ---------------------------------------------------------------- errors


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match=r"unknown dataset 'kitti': expected one of "
                                           r"camvid, cityscapes, builtin"):
        load_split("kitti", "train")
    with pytest.raises(DatasetError, match=r"unknown split 'training'"):
        load_split("builtin", "training")


def test_corrupt_image(camvid_fixture):
    (camvid_fixture / "train" / "0001TP_000001.png").write_bytes(b"not a png")
    data = load_split("camvid", "train", camvid_fixture)
    data[0]
    with pytest.raises(DatasetError, match=r"cannot read image camvid/train/0001TP_000001\.png"):
        data[1]


def test_missing_image(camvid_fixture):
    (camvid_fixture / "trainannot" / "0001TP_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"missing file camvid/trainannot/0001TP_000002\.png "
                                           r"\(listed in camvid/train\.txt line 3\)"):
        load_split("camvid", "train", camvid_fixture)


def test_label_out_of_range(camvid_fixture):
    label = np.zeros((36, 48), np.uint8)
    label[5, 5], label[6, 6] = 11, 13  # 11 is the ignore label: allowed
    Image.fromarray(label).save(camvid_fixture / "trainannot" / "0001TP_000000.png")
    data = load_split("camvid", "train", camvid_fixture)
    with pytest.raises(DatasetError, match=r"label 13 in camvid/trainannot/0001TP_000000\.png: "
                                           r"expected 0\.\.10 or 11"):
        data[0]


def test_out_of_range_label_beside_an_ignore_value_above_it():
    with pytest.raises(DatasetError, match=r"label 100 in x\.png: expected 0\.\.3 or 255"):
        check_label(np.array([[0, 100, 255]], np.uint8), 3, 255, "x.png", ".")
    check_label(np.array([[0, 3, 255]], np.uint8), 3, 255, "x.png", ".")


@pytest.mark.parametrize("check", [False, True])
def test_a_16_bit_grayscale_image_is_refused_not_clipped(camvid_fixture, check):
    """PIL's RGB conversion of a one-channel 16-bit image clips it at 255: refused by name,
    when read and by the header-only check alike."""
    image = camvid_fixture / "train" / "0001TP_000001.png"
    ramp = np.linspace(0, 65000, 36 * 48).reshape(36, 48).astype(np.uint16)
    Image.fromarray(ramp).save(image)
    assert Image.open(image).mode.startswith("I;16")
    data = load_split("camvid", "train", camvid_fixture)
    with pytest.raises(DatasetError, match=r"image camvid/train/0001TP_000001\.png has PIL mode I;16.*8-bit"):
        check_pair(*data.samples[1], data.spec, camvid_fixture) if check else data[1]


def test_size_mismatch(camvid_fixture):
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(
        camvid_fixture / "valannot" / "0001TP_000001.png")
    data = load_split("camvid", "val", camvid_fixture)
    with pytest.raises(DatasetError, match=r"image camvid/val/0001TP_000001\.png is 48x36 but "
                                           r"label camvid/valannot/0001TP_000001\.png is 48x30"):
        data[1]


def test_empty_or_missing_split(camvid_fixture, tmp_path):
    with pytest.raises(DatasetError, match=r"missing list file camvid/test\.txt"):
        load_split("camvid", "test", camvid_fixture)
    (camvid_fixture / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"list file camvid/val\.txt is empty"):
        load_split("camvid", "val", camvid_fixture)
    (camvid_fixture / "val.txt").write_text("only_one_path.png\n")
    with pytest.raises(DatasetError, match=r"camvid/val\.txt line 1"):
        load_split("camvid", "val", camvid_fixture)
    with pytest.raises(DatasetError, match=r"CamVid folder .*nowhere not found"):
        load_split("camvid", "train", tmp_path / "nowhere")
    (camvid_fixture / "val.txt").write_bytes(b"\xff\xfe not text\n")  # was: a message naming no file
    with pytest.raises(DatasetError, match=r"cannot read list file camvid/val\.txt: 'utf-8' codec"):
        load_split("camvid", "val", camvid_fixture)


def test_every_class_has_a_colour_of_its_own():
    """Masks colour each class apart, in the dataset's palette (was: tab20 resampled, whose
    light and dark pairs gave pedestrian and bicyclist one hue)."""
    for spec in DATASETS.values():
        colors = class_colors(spec)
        assert colors.shape == (spec.num_classes, 3) and len({tuple(c) for c in colors}) == spec.num_classes
    assert tuple(class_colors(DATASETS["cityscapes"])[0]) == (128, 64, 128)  # road, as cityscapesScripts has it
