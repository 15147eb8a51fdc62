import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from itnet_keras.losses import MaskedCrossEntropy
from itnet_keras.metrics import (
    SegmentationMeanIoU,
    anytime_auc,
    class_rates,
    confusion_matrix,
    iou_from_confusion,
    majority_class_miou,
    mean_iou,
)

C, IGNORE = 5, 255  # class 3 never appears (labels nor predictions); 255 is void


def split_batches(seed=0):
    """Four batches of (labels [2,4,5], logits [2,4,5,C]); class 2 absent from batch 1's
    labels, class 3 absent everywhere, some void pixels."""
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(4):
        labels = rng.choice([0, 1, 2, 4], size=(2, 4, 5))
        if b == 1:
            labels[labels == 2] = 0
        labels[rng.random(labels.shape) < 0.2] = IGNORE
        logits = rng.normal(size=(2, 4, 5, C)).astype("float32")
        logits[..., 3] = -100.0
        batches.append((labels.astype("int32"), logits))
    return batches


def reference_iou(batches):
    """Per-class IoU by set logic over the whole split, NaN for an empty union."""
    labels = np.concatenate([lab.ravel() for lab, _ in batches])
    preds = np.concatenate([lg.argmax(-1).ravel() for _, lg in batches])
    valid = labels != IGNORE
    iou = []
    for c in range(C):
        inter = np.sum((labels == c) & (preds == c) & valid)
        union = np.sum(((labels == c) | (preds == c)) & valid)
        iou.append(inter / union if union else np.nan)
    return np.array(iou)


def test_metric_matches_reference_over_split():
    batches = split_batches()
    metric = SegmentationMeanIoU(num_classes=C, ignore_label=IGNORE)
    for labels, logits in batches:
        metric.update_state(labels, logits)
    expected = reference_iou(batches)
    assert np.isnan(expected[3]) and np.isnan(expected).sum() == 1
    np.testing.assert_allclose(metric.iou_per_class(), expected, rtol=1e-6)
    assert float(metric.result()) == pytest.approx(np.nanmean(expected), rel=1e-6)
    # The confusion matrix, rows labels, against np.add.at.
    cm = np.zeros((C, C), np.int64)
    for labels, logits in batches:
        keep = labels != IGNORE
        np.add.at(cm, (labels[keep], logits.argmax(-1)[keep]), 1)
    np.testing.assert_array_equal(metric.confusion_matrix(), cm)
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0 and float(metric.result()) == 0.0


def test_metric_sample_weight_masks_pixels():
    labels, logits = split_batches()[0]
    weight = (np.arange(labels.size).reshape(labels.shape) % 3 != 0).astype("float32")
    metric = SegmentationMeanIoU(C, IGNORE)
    metric.update_state(labels, logits, sample_weight=weight)
    masked = np.where(weight > 0, labels, IGNORE)
    np.testing.assert_array_equal(
        metric.confusion_matrix(), confusion_matrix(masked, logits.argmax(-1), C, IGNORE)
    )
    per_image = SegmentationMeanIoU(C, IGNORE)
    per_image.update_state(labels, logits, sample_weight=np.array([0.0, 1.0]))
    np.testing.assert_array_equal(
        per_image.confusion_matrix(),
        confusion_matrix(labels[1], logits[1].argmax(-1), C, IGNORE),
    )


@pytest.mark.parametrize("form", ["segment_sum", "spread"])
def test_both_counting_forms_give_the_same_confusion_matrix(form, monkeypatch):
    monkeypatch.setenv("ITNET_CONFUSION_FORM", form)
    batches = split_batches(2)
    labels, logits = batches[0]
    weight = (np.arange(labels.size).reshape(labels.shape) % 3 != 0).astype("float32")
    metric = SegmentationMeanIoU(C, IGNORE)
    metric.update_state(labels, logits, sample_weight=weight)
    rng = np.random.default_rng(3)   # and a batch of more pixels (1800) than the spread form's copies
    big = (rng.choice([0, 1, 4, IGNORE], size=(3, 20, 30)).astype("int32"), rng.normal(size=(3, 20, 30, C)).astype("float32"))
    for labels, logits in [*batches[1:], big]:
        metric.update_state(labels, logits)
    expected = confusion_matrix(np.where(weight > 0, batches[0][0], IGNORE), batches[0][1].argmax(-1), C, IGNORE)
    for labels, logits in [*batches[1:], big]:
        expected += confusion_matrix(labels, logits.argmax(-1), C, IGNORE)
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)


def test_an_unknown_counting_form_is_refused(monkeypatch):
    monkeypatch.setenv("ITNET_CONFUSION_FORM", "scatter")
    labels, logits = split_batches()[0]
    with pytest.raises(ValueError, match="ITNET_CONFUSION_FORM='scatter': expected auto, segment_sum or spread"):
        SegmentationMeanIoU(C, IGNORE).update_state(labels, logits)


def test_metric_in_compiled_model_and_config_round_trip():
    inputs = keras.Input((4, 5, C))
    model = keras.Model(inputs, keras.layers.Identity(name="output_1")(inputs))
    metric = SegmentationMeanIoU(C, IGNORE, name="miou_1")
    model.compile(loss=MaskedCrossEntropy(IGNORE), metrics=[metric], jit_compile=True)
    batches = split_batches(1)
    x = np.concatenate([lg for _, lg in batches])
    y = np.concatenate([lab for lab, _ in batches])
    logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    assert logs["miou_1"] == pytest.approx(np.nanmean(reference_iou(batches)), rel=1e-6)
    restored = SegmentationMeanIoU.from_config(metric.get_config())
    assert (restored.num_classes, restored.ignore_label, restored.name) == (C, IGNORE, "miou_1")


@pytest.mark.parametrize("form", ["auto", "spread"])   # auto: the plain segment sum on this CPU
def test_metric_under_jax_backend(form):
    script = textwrap.dedent(
        """
        import numpy as np, keras
        from itnet_keras.metrics import SegmentationMeanIoU
        from itnet_keras.losses import MaskedCrossEntropy
        from tests.test_metrics import split_batches, reference_iou, C, IGNORE
        from tests.test_losses import random_batch, reference_loss
        batches = split_batches(2)
        metric = SegmentationMeanIoU(C, IGNORE)
        for labels, logits in batches:
            metric.update_state(labels, logits)
        assert abs(float(metric.result()) - np.nanmean(reference_iou(batches))) < 1e-6
        inputs = keras.Input((4, 5, C))
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        model.compile(
            loss=MaskedCrossEntropy(IGNORE), metrics=[SegmentationMeanIoU(C, IGNORE)]
        )
        x = np.concatenate([lg for _, lg in batches])
        y = np.concatenate([lab for lab, _ in batches])
        logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
        assert abs(logs["miou"] - np.nanmean(reference_iou(batches))) < 1e-6, logs
        assert abs(logs["loss"] - reference_loss(y, x, IGNORE)) < 1e-4, logs
        labels, logits = random_batch(5)
        assert abs(float(MaskedCrossEntropy(4)(labels, logits))
                   - reference_loss(labels, logits, 4)) < 1e-5
        print("jax ok", keras.backend.backend())
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=path, ITNET_CONFUSION_FORM=form)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jax ok jax" in done.stdout


def test_numpy_helpers():
    cm = confusion_matrix([[0, 1], [2, 9]], [[0, 2], [2, 1]], num_classes=3, ignore_label=9)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    # IoU: class 0: 1/1; class 1: 0/(0+0+1) = 0; class 2: 1/(1+1+0) = 0.5.
    np.testing.assert_allclose(iou_from_confusion(cm), [1.0, 0.0, 0.5])
    assert mean_iou(cm) == pytest.approx(0.5)
    with_absent = np.zeros((4, 4), np.int64)
    with_absent[:3, :3] = cm
    assert np.isnan(iou_from_confusion(with_absent)[3])
    assert mean_iou(with_absent) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="label 7 found: expected 0..2"):
        confusion_matrix([7], [0], 3, ignore_label=9)
    with pytest.raises(ValueError, match="prediction 3 found"):
        confusion_matrix([0], [3], 3, ignore_label=9)
    with pytest.raises(ValueError, match="same number"):
        confusion_matrix([0, 1], [0], 3, ignore_label=9)


def test_class_rates_hand_computed():
    # labels (rows): class 0 on 6 pixels, class 1 on 3, class 2 on 1, class 3 on none
    cm = np.array([[4, 1, 1, 0], [0, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    rates = class_rates(cm)
    np.testing.assert_allclose(rates["label_share"], [0.6, 0.3, 0.1, 0.0])
    np.testing.assert_allclose(rates["predicted_share"], [0.5, 0.4, 0.1, 0.0])
    np.testing.assert_allclose(rates["recall"], [4 / 6, 1.0, 0.0, np.nan])  # never labelled: NaN
    np.testing.assert_allclose(rates["precision"], [4 / 5, 3 / 4, 0.0, np.nan])  # never predicted: NaN
    assert all(np.all(np.isnan(v)) or np.all(v == 0) for v in class_rates(np.zeros((2, 2))).values())


def test_anytime_auc_hand_computed():
    # x = (0, 1, 2, 4), y - y0 = (0, 0.2, 0.4, 0.5) with y0 = 0.1:
    # (1-0)*(0.2+0)/2 + (2-1)*(0.4+0.2)/2 + (4-2)*(0.5+0.4)/2 = 0.1 + 0.3 + 0.9 = 1.3
    auc, normalized = anytime_auc([1, 2, 4], [0.3, 0.5, 0.6], chance_miou=0.1)
    assert auc == pytest.approx(1.3)
    assert normalized == pytest.approx(1.3 / 4)
    # Default chance level 0.00828, one output at 2 MACs: 2 * (0.5 - 0.00828) / 2.
    auc, normalized = anytime_auc([2.0], [0.5])
    assert auc == pytest.approx(0.49172)
    assert normalized == pytest.approx(0.24586)


def test_majority_class_miou_is_the_mious_of_a_constant_prediction():
    # labels (rows): class 0 on 6 pixels, class 1 on 3, class 2 on 1, class 3 on none
    cm = np.array([[4, 1, 1, 0], [0, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    labels = np.repeat(np.arange(4), cm.sum(axis=1))
    constant = confusion_matrix(labels, np.zeros_like(labels), 4, ignore_label=9)
    assert majority_class_miou(cm) == pytest.approx(mean_iou(constant)) == pytest.approx(0.6 / 3)
    assert majority_class_miou(np.zeros((3, 3))) == 0.0


@pytest.mark.parametrize(
    "macs, mious, message",
    [
        ([1, 2], [0.5], "same length"),
        ([], [], "same length"),
        ([2, 2], [0.3, 0.4], "strictly"),
        ([3, 2], [0.3, 0.4], "strictly"),
        ([0, 2], [0.3, 0.4], "positive"),
        ([1, 2], [0.3, float("nan")], "finite"),
    ],
)
def test_anytime_auc_rejects_bad_input(macs, mious, message):
    with pytest.raises(ValueError, match=message):
        anytime_auc(macs, mious)


def test_the_spread_form_takes_fewer_copies_for_many_cells(monkeypatch):
    # 3000 classes: 9e6 cells, more than 2**22, so one copy (256 would overflow int32 indices).
    from itnet_keras.metrics import batch_counts

    monkeypatch.setenv("ITNET_CONFUSION_FORM", "spread")
    cells = 3000 * 3000
    cell = np.array([0, cells - 1, cells - 1, 12345], "int32")
    valid = np.array([True, True, True, False])
    counts = np.asarray(keras.ops.convert_to_numpy(batch_counts(cell, valid, cells)))
    assert counts.shape == (cells,) and counts[0] == 1 and counts[cells - 1] == 2 and counts.sum() == 3
