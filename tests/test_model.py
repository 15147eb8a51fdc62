"""The ItNet model: shapes, the loop, gradients, batch norms, anytime use, saving."""

import inspect
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from itnet_keras import build_itnet
from itnet_keras.config import build_parser
from itnet_keras.costs import output_costs
from itnet_keras.datasets import DATASETS
from itnet_keras.iterative_block import IterativeBlock
from itnet_keras.model import anytime, dtype_policy, encode, finish, iterative_block, step
from itnet_keras.presets import DATASET_NAMES, DEFAULTS, MODEL_ARGS

SMALL = dict(num_classes=3, width=8, num_scales=2, num_iterations=3, expansion=2)
VARIANTS = [
    dict(weight_sharing=True, bn_placement="between"),
    dict(weight_sharing=False, bn_placement="between"),
    dict(weight_sharing=True, bn_placement="every_conv"),
    dict(weight_sharing=False, bn_placement="every_conv"),
]
VARIANT_IDS = ["shared-between", "independent-between", "shared-every_conv", "independent-every_conv"]


def random_batch(batch=2, height=32, width=40, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((batch, height, width, 3), dtype=np.float32)
    labels = rng.integers(0, classes, (batch, height, width)).astype("int32")
    return images, labels


def compile_for_training(model, learning_rate=1e-2):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=[loss] * len(model.outputs))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("size", [(32, 40), (37, 45), (64, 24)])
def test_outputs_are_named_and_full_resolution(variant, size):
    model = build_itnet(**SMALL, **variant)
    images, _ = random_batch(height=size[0], width=size[1])
    outputs = model(images)
    assert model.output_names == ["output_1", "output_2", "output_3"]
    assert [tuple(o.shape) for o in outputs] == [(2, *size, 3)] * 3


def test_fixed_input_size_matches_open_size():
    open_model = build_itnet(**SMALL)
    fixed = build_itnet(**SMALL, input_shape=(32, 40, 3))
    fixed.set_weights(open_model.get_weights())
    images, _ = random_batch()
    for a, b in zip(open_model(images), fixed(images)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("weight_sharing", [True, False], ids=["shared", "independent"])
def test_per_iteration_weights_start_independent(weight_sharing):
    """Each iteration's row of a stacked kernel (the heads; every conv when independent) is
    its own Glorot draw, and a seed fixes them all."""
    keras.utils.set_random_seed(1)
    model = build_itnet(**SMALL, weight_sharing=weight_sharing)
    block = iterative_block(model)
    stacked = {use.variable.path: np.asarray(use.variable) for use in block.weight_usage()
               if use.rows and "kernel" in use.variable.path}
    assert any("head" in path for path in stacked)
    assert (len(stacked) > 1) == (not weight_sharing)
    for path, rows in stacked.items():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                assert not np.allclose(rows[a], rows[b]), f"{path}: rows {a} and {b} are equal"
        kh, kw, fan_in, fan_out = rows.shape[1:]
        limit = np.sqrt(6 / (kh * kw * (fan_in + fan_out)))  # Glorot uniform of one row
        assert np.abs(rows).max() <= limit and np.abs(rows).max() > limit / 2, path
    keras.utils.set_random_seed(1)
    again = build_itnet(**SMALL, weight_sharing=weight_sharing)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_l2_penalizes_every_conv_kernel_and_nothing_else(variant):
    """SPEC s.4: L2 on the conv kernels (data block, iterative block, heads), none on a bias
    or a batch norm; Keras' l2 * sum(w^2)."""
    model = build_itnet(**SMALL, **variant, l2=1e-3)
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert {w.path.split("/")[-1].split("_")[0] for w in kernels} >= {"head", "scale1"}
    expected = 1e-3 * sum(float(np.sum(np.square(np.asarray(w)))) for w in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_traced_graph_keeps_one_loop():
    model = build_itnet(**SMALL)
    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((1, 32, 40, 3))).graph
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(loops) == 1


@pytest.mark.parametrize("sharing", [True, False])
def test_weights_exist_once_or_per_iteration(sharing):
    model = build_itnet(**SMALL, weight_sharing=sharing, input_shape=(32, 40, 3))
    kernel = next(w for w in iterative_block(model).weights if w.name == "scale1_block1_expand_kernel")
    assert tuple(kernel.shape) == ((1, 1, 8, 16) if sharing else (3, 1, 1, 8, 16))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert output_costs(model)[-1]["params"] == trainable


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_gradients_reach_every_weight_and_iteration(variant):
    model = build_itnet(**SMALL, **variant)
    images, labels = random_batch()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = sum(loss_fn(labels, o) for o in model(images, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    block = iterative_block(model)
    rows = {id(v): r for v, r, _ in block.weight_usage()}
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        grad = np.asarray(grad)
        if rows.get(id(weight)):  # per-iteration stack: every row gets a gradient ...
            per_row = np.abs(grad).reshape(grad.shape[0], -1).sum(axis=1)
            if weight.name.startswith("scale1_") or weight.name.startswith("head_"):
                assert np.all(per_row > 0), weight.path
            else:  # ... but the heads read S_1 only: coarser scales of iteration N feed nothing
                assert np.all(per_row[:-1] > 0) and per_row[-1] == 0, weight.path
        else:
            assert np.abs(grad).sum() > 0, weight.path


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=VARIANT_IDS[:2])
def test_training_mixes_with_one_conv_that_equals_both(variant):
    """In training, with the norms between iterations, the mixing block's 3x3 conv and 1x1
    projection run as one 3x3 conv (the projection's kernel at its centre): the same values
    as the two convs that inference runs, biases included, at a Python or a tensor n."""
    model = build_itnet(**SMALL, **variant)
    block = iterative_block(model)
    rng = np.random.default_rng(0)
    for weight in block.weights:
        if weight.name.endswith("_bias"):
            weight.assign(rng.standard_normal(weight.shape))
    state = [ops.convert_to_tensor(rng.standard_normal((2, 16 // s, 20 // s, 8), dtype=np.float32)) for s in (1, 2)]
    for n in (1, 2, tf.constant(2)):
        for scale in (1, 2):
            merged, apart = (block._mix_at(state, scale, n, training, {})[0] for training in (True, False))
            np.testing.assert_allclose(merged, apart, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=VARIANT_IDS[:3])
def test_training_lowers_loss_and_moves_every_batch_norm(variant):
    keras.utils.set_random_seed(1)
    model = build_itnet(**SMALL, **variant, dropout=0.1)
    compile_for_training(model)
    images, _ = random_batch(batch=4)
    labels = (images[..., 0] > 0.5).astype("int32") + (images[..., 1] > 0.5)  # learnable
    block = iterative_block(model)
    moving = {v.name: np.array(v) for v, _, _ in block.weight_usage() if "moving" in v.name}
    history = model.fit(images, [labels] * 3, epochs=10, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < 0.9 * history[0]
    for variable, _, _ in block.weight_usage():
        if "moving" in variable.name:
            changed = np.abs(np.array(variable) - moving[variable.name]).reshape(variable.shape[0], -1).sum(1)
            assert np.all(changed > 0), variable.name  # every iteration's statistics moved


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_anytime_and_steps_equal_the_full_model(variant):
    model = build_itnet(**SMALL, **variant)
    images, _ = random_batch(height=32, width=48)
    outputs = [np.asarray(o) for o in model(images, training=False)]
    state = encode(model, images)
    for n in range(1, 4):
        np.testing.assert_allclose(anytime(model, images, n), outputs[n - 1], atol=1e-5)
        np.testing.assert_allclose(anytime(model, images, tf.constant(n)), outputs[n - 1], atol=1e-5)
        for count in (n, tf.constant(n)):  # the last step without the state
            np.testing.assert_allclose(finish(model, state, count), outputs[n - 1], atol=1e-5)
        state, logits = step(model, state, n)
        np.testing.assert_allclose(logits, outputs[n - 1], atol=1e-5)
    logits, last = iterative_block(model).anytime(encode(model, images), 3, with_state=True)
    np.testing.assert_allclose(tf.image.resize(logits, images.shape[1:3]), outputs[2], atol=1e-5)
    for a, b in zip(last, state):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(anytime(model, images, 0), outputs[0], atol=1e-5)  # clamped
    np.testing.assert_allclose(anytime(model, images, tf.constant(99)), outputs[-1], atol=1e-5)


def test_every_dropout_mask_has_its_own_seed_across_steps():
    """The seed of each (step, iteration, scale, bottleneck) is unique: no mask repeats, as it
    did when the iteration shared the seed component that the generator steps."""
    model = build_itnet(num_classes=3, width=8, num_scales=2, num_iterations=4, num_blocks=2, dropout=0.1)
    block = iterative_block(model)
    seeds = set()
    for _ in range(5):  # five training steps
        step = block.step_seed()
        for n in range(4):
            for l in (1, 2):
                for k in (1, 2):
                    seeds.add(tuple(int(v) for v in ops.convert_to_numpy(block.dropout_seed(step, n, l, k))))
    assert len(seeds) == 5 * 4 * 2 * 2


def test_unrolled_variant_computes_the_same():
    loop = build_itnet(**SMALL, weight_sharing=False)
    unrolled = build_itnet(**SMALL, weight_sharing=False, unroll=True)
    unrolled.set_weights(loop.get_weights())
    images, _ = random_batch()
    for a, b in zip(loop(images), unrolled(images)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_keras_round_trip_in_a_fresh_process(tmp_path):
    """Saved compiled as `fit` compiles (the project's loss and mIoU metric), the model loads
    with `keras.models.load_model` after `import itnet_keras` (was: an unknown
    `MaskedCrossEntropy`, registered only once `itnet_keras.losses` was imported)."""
    from itnet_keras.losses import MaskedCrossEntropy
    from itnet_keras.metrics import SegmentationMeanIoU

    model = build_itnet(**SMALL, weight_sharing=False, bn_placement="every_conv")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=[MaskedCrossEntropy(255)] * 3,
                  metrics=[[SegmentationMeanIoU(3, 255)] for _ in range(3)])
    images, labels = random_batch()
    model.fit(images, [labels] * 3, epochs=1, verbose=0)  # moving statistics away from init
    expected = np.stack([np.asarray(o) for o in model(images, training=False)])
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import itnet_keras  # registers the custom layers
        model = keras.models.load_model({str(tmp_path / 'model.keras')!r})
        out = model(np.load({str(tmp_path / 'images.npy')!r}), training=False)
        np.save({str(tmp_path / 'loaded.npy')!r}, np.stack([np.asarray(o) for o in out]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), expected)


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        (dict(width=1), "width"),
        (dict(num_iterations=0), "num_iterations"),
        (dict(num_classes=1), "num_classes"),
        (dict(input_shape=(32, 32, 1)), "input_shape"),
        (dict(bn_placement="after"), "bn_placement"),
        (dict(preset="nope"), "preset"),
        (dict(widht=8), "widht"),
        (dict(dropout="0.1"), "dropout='0.1': expected a rate"),  # was: a TypeError of the comparison
        (dict(l2="1e-5"), "l2='1e-5': expected a finite factor"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, culprit):
    with pytest.raises((ValueError, TypeError), match=culprit):
        build_itnet(**kwargs)


def test_presets_override():
    model = build_itnet("camvid_independent", width=30, input_shape=(360, 480, 3))
    config = iterative_block(model).get_config()
    assert (config["width"], config["weight_sharing"], config["num_iterations"]) == (30, False, 16)


def test_trains_under_jax_backend():
    script = textwrap.dedent("""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from itnet_keras import build_itnet
        model = build_itnet("tiny", dropout=0.1)
        n = len(model.outputs)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=[loss] * n)
        keras.utils.set_random_seed(1)
        x = np.random.rand(4, 32, 32, 3).astype("float32")
        y = (x[..., 0] > 0.5).astype("int32") + (x[..., 1] > 0.5)  # learnable
        history = model.fit(x, [y] * n, epochs=10, batch_size=4, verbose=0).history["loss"]
        assert history[-1] < 0.9 * history[0], history
        print("ok")
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_model_arguments_are_listed_once():
    """`presets.MODEL_ARGS` is the list: `IterativeBlock` takes each of them (its own
    further arguments are the layer's: momentum, epsilon, seed), with the same default,
    and `fit` has a flag for each one marked `flag`."""
    signature = inspect.signature(IterativeBlock).parameters
    layer_own = {"momentum", "epsilon", "seed", "kwargs"}
    assert [name for name in signature if name not in layer_own] == [arg.name for arg in MODEL_ARGS]
    defaults = {name: signature[name].default for name in DEFAULTS
                if signature[name].default is not inspect.Parameter.empty}
    assert defaults == {name: DEFAULTS[name] for name in defaults} and len(defaults) >= 9
    assert set(iterative_block(build_itnet("tiny")).get_config()) >= set(DEFAULTS)
    flags = {a.dest for a in build_parser()._actions}
    assert {arg.name for arg in MODEL_ARGS if arg.flag} <= flags
    assert not {arg.name for arg in MODEL_ARGS if not arg.flag} & flags


def test_every_dataset_is_a_data_choice():
    assert sorted(DATASETS) == sorted(DATASET_NAMES)


@pytest.fixture
def mixed_bfloat16():
    with dtype_policy("mixed_bfloat16"):
        yield


@pytest.mark.parametrize("variant", VARIANTS[1:3], ids=VARIANT_IDS[1:3])
def test_trains_and_predicts_under_a_mixed_precision_policy(mixed_bfloat16, variant):
    """Under `mixed_bfloat16` (bfloat16 computation, float32 weights) a training step runs on
    TensorFlow (the loop's batch statistics raised a dtype error), the moving statistics are
    read and updated in float32 (they were read through bfloat16), and inference is the
    float32 model's to bfloat16's precision."""
    keras.utils.set_random_seed(1)
    model = build_itnet(**SMALL, **variant)
    compile_for_training(model)
    images, labels = random_batch(batch=4)
    block = iterative_block(model)
    block.momentum = 1.0  # the update keeps the old values exactly: m * old + (1 - m) * batch
    off_grid = 1 + 2.0**-10  # no bfloat16 value: a read through bfloat16 rounds it to 1
    moving = [v for v, _, _ in block.weight_usage() if "moving" in v.name]
    for variable in moving:
        variable.assign(np.full(variable.shape, off_grid, np.float32))
    assert np.all(np.isfinite(model.train_on_batch(images, [labels] * 3)))
    for variable in moving:
        np.testing.assert_array_equal(np.array(variable), np.float32(off_grid), err_msg=variable.name)
    outputs = [np.asarray(o, np.float32) for o in model.predict(images, verbose=0)]
    if keras.backend.backend() == "tensorflow":  # traced for any input size: the resize at run time
        open_size = tf.function(lambda x: model(x, training=False),
                                input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        for got, expected in zip(open_size(images), outputs):
            np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=0.05)
    keras.mixed_precision.set_dtype_policy("float32")
    reference = build_itnet(**SMALL, **variant)
    reference.set_weights(model.get_weights())
    for got, expected in zip(outputs, reference.predict(images, verbose=0)):
        np.testing.assert_allclose(got, expected, atol=0.05)  # logits up to 0.84; 0.012 apart here
        assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.95
