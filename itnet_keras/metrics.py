"""Evaluation numbers of SPEC s.5: mIoU from a split-wide confusion matrix, anytime AUC.

Convention everywhere: confusion matrix rows are labels, columns predictions; classes with
an empty union (never labelled, never predicted in the split) have IoU NaN and are left
out of the mean.

A batch's confusion matrix is a segment sum (a scatter-add of its pixels into C x C cells).
On a GPU the pixels contend for those few cells (0.4 ms per output and step on an H200, 16
outputs: 14% of the training step's GPU time, docs/benchmarks.md), so there they are spread
over 256 copies of the cells, pixel i into copy i mod 256, and the copies summed: the same
counts. `ITNET_CONFUSION_FORM=segment_sum` or `=spread` forces one form (to compare them).
"""

import os

import keras
import numpy as np
from keras import ops

from itnet_keras.devices import accelerated
from itnet_keras.layers import one_image_at_a_time, resize_like

# TensorFlow and JAX are imported inside the branches that run on that backend only: metrics
# run on either backend without the other installed.


def _count_dtype():
    """int64 counts where the backend has them (JAX only with jax_enable_x64)."""
    if keras.backend.backend() == "jax":
        import jax

        return "int64" if jax.config.read("jax_enable_x64") else "int32"
    return "int64"


SPREAD = 256  # copies of the cells in the spread form, fewer for many classes (at most 2**22 cells in all)


def spread_form():
    """Whether batches are counted in the spread form (on a GPU) rather than the plain one."""
    form = os.environ.get("ITNET_CONFUSION_FORM", "auto")
    if form not in ("auto", "segment_sum", "spread"):
        raise ValueError(f"ITNET_CONFUSION_FORM={form!r}: expected auto, segment_sum or spread")
    if form != "auto":
        return form == "spread"
    return accelerated()


def batch_counts(cell, valid, cells):
    """float32 [cells]: how many pixels with `valid` fall in each of `cells` cells (int32 `cell`)."""
    weight = ops.cast(valid, "float32")
    if not spread_form():
        return ops.segment_sum(weight, cell, num_segments=cells, sorted=False)
    copies = max(1, min(SPREAD, 2**22 // cells))
    copy = ops.arange(ops.shape(cell)[0], dtype="int32") % copies
    counts = ops.segment_sum(weight, copy * cells + cell, num_segments=copies * cells, sorted=False)
    return ops.sum(ops.reshape(counts, (copies, cells)), axis=0)


@keras.saving.register_keras_serializable(package="itnet_keras")
class SegmentationMeanIoU(keras.metrics.Metric):
    """mIoU of one output over a whole split (SPEC s.5), from an integer confusion matrix.

    `update_state(y_true, y_pred)`: int labels [B, H, W] (or [B, H, W, 1]) and logits
    [B, H, W, C], or with `resize` [B, h, w, C], resized bilinearly to H x W first, one image
    at a time (as `MaskedCrossEntropy(resize=True)`); the prediction is the argmax. Pixels
    labelled `ignore_label`, or with any label outside 0..num_classes-1, are not counted.
    `sample_weight`, broadcastable to the labels, is a pixel mask: pixels with weight 0 are
    not counted.

    Counts are int64 (int32 under JAX without x64: exact up to 2**31 per cell); each
    batch is counted in float32, exact below 2**24 pixels per batch.
    `result()` is the mean IoU over classes with a non-empty union in the split.
    """

    def __init__(self, num_classes, ignore_label, resize=False, name="miou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.resize = bool(resize)
        self.total_cm = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype=_count_dtype(),
            name="total_confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        c = self.num_classes
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        preds = ops.reshape(self._classes(y_true, y_pred), (-1,))
        valid = (labels != self.ignore_label) & (labels >= 0) & (labels < c)
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            while len(weight.shape) < len(y_true.shape):
                weight = ops.expand_dims(weight, axis=-1)
            weight = ops.broadcast_to(weight, ops.shape(y_true))
            valid = valid & (ops.reshape(weight, (-1,)) != 0)
        cell = ops.where(valid, labels * c + preds, ops.zeros_like(labels))
        counts = batch_counts(cell, valid, c * c)
        counts = ops.reshape(ops.cast(counts, self.total_cm.dtype), (c, c))
        self.total_cm.assign_add(counts)

    def _classes(self, y_true, y_pred):
        def argmax(y_pred):
            return ops.cast(ops.argmax(y_pred, axis=-1), "int32")

        if not self.resize:
            return argmax(y_pred)
        # A resized batch is 64x the heads' logits: one image at a time.
        return one_image_at_a_time(lambda y, p: argmax(resize_like(p, y)), y_true, y_pred)

    def result(self):
        cm = ops.cast(self.total_cm, "float32")
        tp = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        present = ops.cast(union > 0, "float32")
        iou = ops.divide_no_nan(tp, union)
        return ops.divide_no_nan(ops.sum(iou * present), ops.sum(present))

    def reset_state(self):
        self.total_cm.assign(ops.zeros(self.total_cm.shape, self.total_cm.dtype))

    def confusion_matrix(self):
        """The accumulated confusion matrix as int64 numpy, rows labels."""
        return np.asarray(ops.convert_to_numpy(self.total_cm), dtype=np.int64)

    def iou_per_class(self):
        """Per-class IoU as numpy, NaN for classes with an empty union."""
        return iou_from_confusion(self.confusion_matrix())

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_label=self.ignore_label, resize=self.resize)
        return config


def confusion_matrix(labels, predictions, num_classes, ignore_label):
    """int64 [C, C] counts, rows labels, columns predicted class ids (not logits).

    Pixels labelled `ignore_label` are skipped; any other label or prediction outside
    0..num_classes-1 raises ValueError.
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"confusion_matrix: labels have {labels.size} pixels, "
            f"predictions {predictions.size}; expected the same number"
        )
    keep = labels != ignore_label
    labels, predictions = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    for what, ids in (("label", labels), ("prediction", predictions)):
        bad = ids[(ids < 0) | (ids >= num_classes)]
        if bad.size:
            raise ValueError(
                f"confusion_matrix: {what} {bad[0]} found: expected 0..{num_classes - 1}"
                f" (or the ignore label {ignore_label} for labels)"
            )
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(cm):
    """Per-class IoU = TP / (TP + FP + FN); NaN where the union is empty."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def class_rates(cm):
    """Per class, from a confusion matrix whose rows are the labels: the class's share of the
    labelled pixels, the share of those pixels predicted as it, its recall TP / (TP + FN) and
    its precision TP / (TP + FP) (NaN where the class is never labelled, or never predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, labelled, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    total = cm.sum() or 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"label_share": labelled / total, "predicted_share": predicted / total,
                "recall": np.where(labelled > 0, tp / labelled, np.nan),
                "precision": np.where(predicted > 0, tp / predicted, np.nan)}


def mean_iou(cm):
    """Mean IoU over classes with a non-empty union (0.0 for an empty matrix)."""
    iou = iou_from_confusion(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else 0.0


def majority_class_miou(cm):
    """The mIoU of predicting the split's most frequent labelled class at every pixel: its
    share of the labelled pixels over the number of classes present (a chance level for the
    area under mIoU over MACs where none is published; `cm`'s rows are the labels)."""
    cm = np.asarray(cm)
    counts = cm.sum(axis=1)
    return float(counts.max() / counts.sum() / np.count_nonzero(counts)) if counts.sum() else 0.0


def anytime_auc(macs, mious, chance_miou=0.00828):
    """Area under mIoU over MACs and its normalized value (SPEC s.5).

    With (x_0, y_0) = (0, chance_miou) prepended to the outputs' (MACs, mIoU):
    AUC = sum_n (x_{n+1} - x_n) * ((y_{n+1} - y_0) + (y_n - y_0)) / 2, AUC' = AUC / x_N.
    Returns (auc, normalized_auc) as floats.
    """
    x = np.asarray(macs, dtype=np.float64)
    y = np.asarray(mious, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.size != y.size or x.size == 0:
        raise ValueError(
            f"anytime_auc: got {x.size} MACs and {y.size} mIoUs; expected two "
            "non-empty 1-D sequences of the same length (one entry per output)"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("anytime_auc: expected finite MACs and mIoUs")
    x = np.concatenate([[0.0], x])
    y = np.concatenate([[chance_miou], y]) - chance_miou
    if np.any(np.diff(x) <= 0):
        raise ValueError(
            f"anytime_auc: MACs {list(x[1:])}: expected positive and strictly "
            "increasing over the outputs"
        )
    auc = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
    return auc, auc / float(x[-1])
