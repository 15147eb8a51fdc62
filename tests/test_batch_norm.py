"""Batch-norm recalibration (`batch_norm.py`, `python -m itnet_keras.recalibrate`) and the
moving-statistics update of training that it replaces."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from itnet_keras import build_itnet, recalibrate as command
from itnet_keras.batch_norm import moving_statistics, recalibrate, training_images
from itnet_keras.evaluate import load_itnet
from itnet_keras.model import data_block, iterative_block, model_args
from itnet_keras.pipeline import make_dataset
from test_model import SMALL

# `between`: one norm per scale and iteration; `every_conv` with independent weights: a norm
# after every conv, the mixing ones with N - 1 rows (iteration 1 skips mixing).
VARIANTS = [dict(weight_sharing=True, bn_placement="between"),
            dict(weight_sharing=False, bn_placement="every_conv")]
VARIANT_IDS = ["shared-between", "independent-every_conv"]


def images_like(seed, batch=4, offset=1.0, spread=3.0):
    """Images whose statistics are far from a fresh norm's (mean 0, variance 1)."""
    return (offset + spread * np.random.default_rng(seed).random((batch, 32, 40, 3))).astype(np.float32)


def twin(model, **overrides):
    """A second model with the same weights (and `overrides` of its arguments)."""
    other = build_itnet(**{**model_args(model), **overrides})
    other.set_weights(model.get_weights())
    return other


def values(variables):
    return [np.array(v) for v in variables]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_one_batch_gives_every_norm_its_statistics_with_dropout_off(variant):
    keras.utils.set_random_seed(0)
    model = build_itnet(**SMALL, **variant, dropout=0.5)
    images = images_like(0)
    # Each norm with this batch's own statistics and no dropout: what inference must give after.
    expected = [np.asarray(o) for o in twin(model, dropout=0.0)(images, training=True)]
    with_dropout = [np.asarray(o) for o in model(images, training=True)]
    assert np.abs(with_dropout[-1] - expected[-1]).max() > 1e-2  # dropout is on in training mode
    before = [np.asarray(o) for o in model(images, training=False)]
    assert np.abs(before[-1] - expected[-1]).max() > 1e-2
    trainable = values(model.trainable_variables)

    assert recalibrate(model, [images]) == 1

    for output, wanted in zip(model(images, training=False), expected):
        np.testing.assert_allclose(np.asarray(output), wanted, rtol=1e-4, atol=1e-4)
    for after, weight in zip(values(model.trainable_variables), trainable):
        np.testing.assert_array_equal(after, weight)
    # The data block's first norm, from NumPy: moments of [conv(x), maxpool(x)] concatenated.
    block = data_block(model)
    x = np.concatenate([np.asarray(block.convs[0](images)), np.asarray(block.pool(images))], axis=-1)
    np.testing.assert_allclose(np.array(block.norms[0].moving_mean), x.mean((0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(block.norms[0].moving_variance), x.var((0, 1, 2)), rtol=1e-4, atol=1e-5)
    # The layers are as they were: momentum and dropout restored.
    assert iterative_block(model).dropout == 0.5 and iterative_block(model).momentum == 0.99
    assert all(norm.momentum == 0.99 for norm in block.norms)


def test_several_batches_give_the_average_of_their_statistics():
    keras.utils.set_random_seed(1)
    model = build_itnet(**SMALL, **VARIANTS[1], dropout=0.5)
    names = [v.path for v in moving_statistics(model)]
    assert sorted(names) == sorted(v.path for v in model.non_trainable_variables if "moving" in v.path)
    first, second = images_like(1), images_like(2, offset=-2.0, spread=1.0)
    stats = {}
    for key, batches in (("first", [first]), ("second", [second]), ("both", [first, second])):
        copy = twin(model)
        assert recalibrate(copy, iter(batches)) == len(batches)
        stats[key] = values(moving_statistics(copy))
    for a, b, both, name in zip(stats["first"], stats["second"], stats["both"], names):
        assert np.abs(a - b).max() > 1e-3, name
        np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate(model, [])


def test_a_training_step_moves_every_statistic_toward_the_batch_with_the_momentum():
    """`fit`'s compiled step: moving = 0.99 moving + 0.01 batch statistics, for every norm
    (a learning rate of 0 keeps the weights; the batch statistics from `recalibrate`, which
    the tests above check)."""
    keras.utils.set_random_seed(2)
    model = build_itnet(**SMALL, **VARIANTS[1])  # every norm kind: data block, per iteration, mixing
    images = images_like(3)
    labels = np.random.default_rng(3).integers(0, 3, images.shape[:3]).astype(np.int32)
    reference = twin(model)
    recalibrate(reference, [images])
    old = values(moving_statistics(model))
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 3)
    model.fit(images, [labels] * 3, batch_size=len(images), epochs=1, shuffle=False, verbose=0)
    for new, before, batch, variable in zip(values(moving_statistics(model)), old,
                                            values(moving_statistics(reference)), moving_statistics(model)):
        np.testing.assert_allclose(new, 0.99 * before + 0.01 * batch, rtol=1e-5, atol=1e-6, err_msg=variable.path)


@pytest.mark.large  # about 20 s; fit without TensorFlow (tests/test_backends.py) also recalibrates under JAX
def test_recalibration_on_jax(tmp_path):
    script = """
        import keras, numpy as np
        from itnet_keras import build_itnet
        from itnet_keras.batch_norm import recalibrate
        from itnet_keras.model import model_args
        keras.utils.set_random_seed(0)
        model = build_itnet(num_classes=3, width=8, num_scales=2, num_iterations=3, expansion=2, dropout=0.5)
        plain = build_itnet(**{**model_args(model), "dropout": 0.0})
        plain.set_weights(model.get_weights())
        images = (1 + 3 * np.random.default_rng(0).random((4, 32, 40, 3))).astype("float32")
        expected = plain(images, training=True)
        recalibrate(model, [images])
        print("max difference", max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                                    for a, b in zip(model(images, training=False), expected)))
    """
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("max difference")[1]) < 1e-4


def test_command_writes_a_loadable_recalibrated_file(tmp_path, capsys):
    keras.utils.set_random_seed(3)
    source, output = tmp_path / "model.keras", tmp_path / "recalibrated.keras"
    model = build_itnet("tiny", num_classes=4, dropout=0.1)  # the built-in data's class count
    model.save(source)
    assert command.main([str(source), "--output", str(output), "--batches", "3", "--batch-size", "4"]) == 0
    assert "re-estimated over 3 training batches of builtin" in capsys.readouterr().out
    saved = load_itnet(output)
    for after, weight in zip(values(saved.trainable_variables), values(model.trainable_variables)):
        np.testing.assert_array_equal(after, weight)
    # The same as recalibrating here with the batches the command describes.
    recalibrate(model, training_images(make_dataset("builtin", "train", training=True, batch_size=4), 3))
    for after, wanted in zip(values(moving_statistics(saved)), values(moving_statistics(model))):
        np.testing.assert_allclose(after, wanted, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "recalibrated.keras"]


@pytest.mark.parametrize("arguments, message", [
    (["MISSING", "--output", "OUT/new.keras"], "MISSING does not exist"),
    (["MODEL", "--output", "OUT/no-folder/new.keras"], "--output OUT/no-folder/new.keras: the folder"),
    (["MODEL", "--output", "OUT/new.h5"], "expected a file name ending in .keras"),
    (["MODEL", "--output", "OUT/new.keras", "--crop", "tall"], "--crop 'tall': expected HEIGHTxWIDTH"),
    (["MODEL", "--output", "OUT/new.keras", "--data", "cityscapes"], "--data cityscapes: 19 classes, but"),
])
def test_command_errors_name_the_input_at_fault(tmp_path, capsys, arguments, message):
    build_itnet("tiny", num_classes=4).save(tmp_path / "model.keras")
    names = {"MISSING": str(tmp_path / "missing.keras"), "MODEL": str(tmp_path / "model.keras")}
    arguments = [names.get(a, a.replace("OUT", str(tmp_path))) for a in arguments]
    assert command.main(arguments) == 2
    assert message.replace("OUT", str(tmp_path)).replace("MISSING", names["MISSING"]) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_command_names_an_output_folder_it_cannot_write_before_the_work(tmp_path, capsys, monkeypatch,
                                                                         unwritable_folders):
    """(was: the permission error of a hidden temporary file, after every batch)"""
    build_itnet("tiny", num_classes=4).save(tmp_path / "model.keras")
    monkeypatch.setattr(command, "recalibrate", lambda *args: pytest.fail("recalibrated before the check"))
    assert command.main([str(tmp_path / "model.keras"), "--output", str(tmp_path / "new.keras")]) == 2
    assert (f"error: --output {tmp_path / 'new.keras'}: cannot write into {tmp_path} (Permission denied)"
            in capsys.readouterr().err)


def test_command_refuses_a_batch_count_below_one(capsys):
    with pytest.raises(SystemExit):
        command.main(["model.keras", "--output", "new.keras", "--batches", "0"])
    assert "--batches: '0': expected a number > 0" in capsys.readouterr().err
