import keras
import numpy as np
import pytest

from itnet_keras.losses import MaskedCrossEntropy, output_weights

IGNORE = 4  # 4 classes 0..3, label 4 is void


def reference_loss(labels, logits, ignore_label):
    """Mean cross-entropy over the valid pixels, written out in numpy."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = labels != ignore_label
    picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -picked[valid].mean() if valid.any() else 0.0


def random_batch(seed, shape=(2, 5, 6), num_classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes + 1, size=shape)  # includes the void label
    logits = rng.normal(size=shape + (num_classes,)).astype("float32") * 3
    return labels.astype("int32"), logits


def test_loss_matches_numpy_reference():
    labels, logits = random_batch(0)
    loss = MaskedCrossEntropy(ignore_label=IGNORE)
    assert float(loss(labels, logits)) == pytest.approx(
        reference_loss(labels, logits, IGNORE), rel=1e-5
    )
    # Trailing channel axis on the labels and probabilities instead of logits.
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    prob_loss = MaskedCrossEntropy(ignore_label=IGNORE, from_logits=False)
    assert float(prob_loss(labels[..., None], probs)) == pytest.approx(
        float(loss(labels, logits)), rel=1e-4
    )


def test_loss_ignores_void_pixels():
    labels, logits = random_batch(1)
    loss = MaskedCrossEntropy(ignore_label=IGNORE)
    changed = logits.copy()
    changed[labels == IGNORE] = np.random.default_rng(2).normal(
        size=changed[labels == IGNORE].shape
    ) * 100
    assert float(loss(labels, logits)) == pytest.approx(float(loss(labels, changed)))


def test_all_ignored_batch_gives_zero():
    labels = np.full((2, 3, 3), 255, "int32")
    logits = np.random.default_rng(3).normal(size=(2, 3, 3, 4)).astype("float32")
    value = float(MaskedCrossEntropy(ignore_label=255)(labels, logits))
    assert value == 0.0


def test_loss_config_round_trip():
    loss = MaskedCrossEntropy(ignore_label=11, from_logits=False, name="ce")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(restored, MaskedCrossEntropy)
    assert restored.get_config() == loss.get_config()
    assert (restored.ignore_label, restored.from_logits) == (11, False)
    with pytest.raises(ValueError, match="reduction"):
        MaskedCrossEntropy(ignore_label=11, reduction="sum")


def test_loss_trains_two_output_model():
    inputs = keras.Input((6, 6, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    out_1 = keras.layers.Conv2D(4, 1, name="output_1")(hidden)
    out_2 = keras.layers.Conv2D(4, 1, name="output_2")(hidden)
    model = keras.Model(inputs, {"output_1": out_1, "output_2": out_2})
    weights = output_weights("linear", 2)
    model.compile(
        optimizer="adam",
        loss={name: MaskedCrossEntropy(IGNORE) for name in ("output_1", "output_2")},
        loss_weights={"output_1": weights[0], "output_2": weights[1]},
    )
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 5, size=(4, 6, 6)).astype("int32")
    history = model.fit(x, {"output_1": y, "output_2": y}, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # The total is the weighted sum of the per-output losses.
    preds = model.predict(x, verbose=0)
    loss = MaskedCrossEntropy(IGNORE)
    expected = sum(
        w * float(loss(y, preds[name])) for w, name in zip(weights, ("output_1", "output_2"))
    )
    total = model.evaluate(x, {"output_1": y, "output_2": y}, batch_size=4, verbose=0)
    total = total[0] if isinstance(total, list) else total
    assert total == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("all", 4, [1, 1, 1, 1]),
        ("linear", 4, [1, 2, 3, 4]),
        ("single:2", 4, [0, 1, 0, 0]),
        ("last:2", 4, [0, 0, 1, 1]),
        ("thinned:1", 3, [1, 1, 1]),
        ("thinned:2", 5, [1, 0, 1, 0, 1]),
        ("thinned:2", 6, [1, 0, 1, 0, 1, 1]),  # the last output is always kept
        ("thinned:4", 16, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1]),
        ("0, 0, 2, 6", 4, [0, 0, 2, 6]),
        (" Single:1 ", 1, [1]),
        ("3", 1, [1]),
    ],
)
def test_output_weights(spec, n, expected):
    weights = output_weights(spec, n)
    assert len(weights) == n
    assert sum(weights) == pytest.approx(1.0)
    assert weights == pytest.approx(list(np.array(expected) / sum(expected)))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("every:2", "expected 'all'"),
        ("all:2", "expected 'all'"),
        ("single:0", "1..4"),
        ("single:5", "1..4"),
        ("last:x", "1..4"),
        ("thinned:", "1..4"),
        ("1,2,3", "expected 4 weights"),
        ("1,-1,0,0", ">= 0"),
        ("1,nan,0,0", ">= 0"),
        ("0,0,0,0", "> 0"),
    ],
)
def test_output_weights_rejects_malformed_specs(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        output_weights(spec, 4)
    assert repr(spec) in str(error.value)


def test_output_weights_rejects_bad_num_outputs():
    with pytest.raises(ValueError, match="num_outputs"):
        output_weights("all", 0)
