"""Training loss (SPEC s.4): masked cross-entropy per output and output-weight schedules.

The total loss is L = sum_n abar_n * c_n. Keras builds it from one `MaskedCrossEntropy`
per output and `loss_weights=output_weights(schedule, N)` in `model.compile`.
"""

import keras
from keras import ops

from itnet_keras.layers import one_image_at_a_time, resize_like


@keras.saving.register_keras_serializable(package="itnet_keras")
class MaskedCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy over pixels whose label is not `ignore_label`.

    `y_true` holds int labels [B, H, W] (or [B, H, W, 1]); `y_pred` logits (or
    probabilities if `from_logits=False`) [B, H, W, C], or with `resize` [B, h, w, C],
    resized bilinearly to H x W first (the heads' logits of `model.training_model`: the
    same numbers as the model's outputs). With `remat`, the cross-entropy is computed one
    image at a time and recomputed in the backward pass.

    Reduction: the mean over the valid pixels of the whole batch (not per image): pixels
    with the ignored label contribute nothing to the sum nor to the count. A batch without
    any valid pixel gives 0. `call` returns per-pixel values, 0 at ignored pixels and
    scaled by (pixels in batch / valid pixels in batch), so that Keras' default
    `"sum_over_batch_size"` reduction yields that mean (the same trick Keras uses for
    masks). Only that reduction (alias `"mean"`) is accepted. A `sample_weight`, if
    given, must broadcast to [B, H, W].
    """

    def __init__(self, ignore_label, from_logits=True, remat=False, resize=False, **kwargs):
        super().__init__(**kwargs)
        if self.reduction not in ("sum_over_batch_size", "mean"):
            raise ValueError(
                f"MaskedCrossEntropy reduction={self.reduction!r}: expected "
                "'sum_over_batch_size' (the mean over valid pixels)"
            )
        self.ignore_label = int(ignore_label)
        self.from_logits = bool(from_logits)
        self.remat = bool(remat)
        self.resize = bool(resize)

    def call(self, y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        labels = ops.cast(y_true, "int32")
        valid = ops.not_equal(labels, self.ignore_label)
        # Any in-range label at ignored pixels, so that no backend sees label 255.
        labels = ops.where(valid, labels, ops.zeros_like(labels))
        if self.remat:
            # One image at a time, recomputed in the backward pass: a step keeps y_pred, not
            # its resized copy, the softmax and their kin, and holds one image's at a time.
            per_pixel = one_image_at_a_time(keras.remat(self._cross_entropy), labels, y_pred)
        else:
            per_pixel = self._cross_entropy(labels, y_pred)
        valid = ops.cast(valid, per_pixel.dtype)
        # mean over valid pixels = sum(loss * valid) / total / (valid_count / total).
        return ops.divide_no_nan(per_pixel * valid, ops.mean(valid))

    def _cross_entropy(self, labels, y_pred):
        if self.resize:
            y_pred = resize_like(y_pred, labels)
        return ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=self.from_logits)

    def get_config(self):
        config = super().get_config()
        config.update(ignore_label=self.ignore_label, from_logits=self.from_logits, remat=self.remat,
                      resize=self.resize)
        return config


SCHEDULE_HELP = (
    "'all', 'thinned:K', 'single:n', 'last:m', 'linear', "
    "or a comma list of N non-negative weights such as '0,0,1'"
)


def _int_arg(schedule, arg, low, high):
    """Parses the integer after `name:` and checks low <= value <= high."""
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(
            f"output weight schedule {schedule!r}: expected an integer in "
            f"{low}..{high} after ':', got {arg!r}"
        )
    return value


def output_weights(schedule, num_outputs):
    """Weights abar_n of the N outputs for a schedule spec (SPEC s.4), summing to 1.

    - `all`: every output equally.
    - `thinned:K`: the first output, every K-th after it (outputs 1, 1+K, 1+2K, ...,
      1-based) and always the last output N (the full-cost prediction), equally.
      `thinned:1` equals `all`; with N=16, `thinned:4` keeps 1, 5, 9, 13, 16.
    - `single:n`: only output n (1-based).
    - `last:m`: the last m outputs equally.
    - `linear`: a_n proportional to n.
    - `a_1,...,a_N`: explicit non-negative weights, normalized.

    Raises ValueError naming the spec for anything else.
    """
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs={num_outputs!r}: expected an integer >= 1")
    n_out = num_outputs
    spec = str(schedule).strip().lower()
    name, _, arg = spec.partition(":")
    if name == "all" and not arg:
        raw = [1.0] * n_out
    elif name == "linear" and not arg:
        raw = [float(n) for n in range(1, n_out + 1)]
    elif name == "thinned":
        k = _int_arg(schedule, arg, 1, n_out)
        kept = set(range(0, n_out, k)) | {n_out - 1}
        raw = [1.0 if i in kept else 0.0 for i in range(n_out)]
    elif name == "single":
        n = _int_arg(schedule, arg, 1, n_out)
        raw = [1.0 if i == n - 1 else 0.0 for i in range(n_out)]
    elif name == "last":
        m = _int_arg(schedule, arg, 1, n_out)
        raw = [1.0 if i >= n_out - m else 0.0 for i in range(n_out)]
    else:
        raw = _explicit_weights(schedule, spec, n_out)
    total = sum(raw)
    return [a / total for a in raw]


def _explicit_weights(schedule, spec, num_outputs):
    try:
        raw = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"output weight schedule {schedule!r}: expected {SCHEDULE_HELP}"
        ) from None
    if len(raw) != num_outputs:
        raise ValueError(
            f"output weight schedule {schedule!r}: expected {num_outputs} weights "
            f"(one per output), got {len(raw)}"
        )
    if any(not a >= 0 or a == float("inf") for a in raw):
        raise ValueError(
            f"output weight schedule {schedule!r}: expected finite weights >= 0"
        )
    if sum(raw) == 0:
        raise ValueError(
            f"output weight schedule {schedule!r}: expected at least one weight > 0"
        )
    return raw
