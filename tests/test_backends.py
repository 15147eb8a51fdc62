"""Training and evaluation on any Keras backend: without TensorFlow, compiled evaluation,
data parallel on JAX, rematerialization (issue 12). JAX runs in subprocesses."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from itnet_keras import build_itnet, convs
from itnet_keras.evaluate import predict_classes, split_confusion_matrices
from itnet_keras.iterative_block import IterativeBlock
from itnet_keras.losses import MaskedCrossEntropy
from itnet_keras.metrics import SegmentationMeanIoU
from itnet_keras.model import iterative_block, training_model
from itnet_keras.pipeline import make_dataset

REPO = Path(__file__).resolve().parents[1]
# Makes `import tensorflow` fail as on a machine without it.
NO_TENSORFLOW = """
import importlib.abc, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTensorFlow())
"""


def run_jax(script, tmp_path, devices=1):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_fit_and_evaluate_run_without_tensorflow(tmp_path):
    out = run_jax(NO_TENSORFLOW + """
        from itnet_keras import evaluate, fit
        assert fit.main(["--limit", "16", "--epochs", "1", "--bn-batches", "2", "--output", "run"]) == 0
        assert evaluate.main(["run/last.keras", "--limit", "12", "--batch-size", "8", "--output", "eval"]) == 0
        assert "tensorflow" not in sys.modules
        try:
            import itnet_keras.export
        except ImportError as error:
            print("export:", error)
    """.replace("\n        ", "\n"), tmp_path)
    assert 'export: itnet_keras.export needs TensorFlow' in out and 'pip install -e ".[export]"' in out
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["images"] == 12 and len(report["outputs"]) == 4
    for part in ("train", "validation"):  # TensorBoard event files, written by tensorboardX
        events = list((tmp_path / "run" / "tensorboard" / part).glob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 100, part


def test_keras_without_its_backend_stops_a_command_with_how_to_install_one(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update(KERAS_HOME=str(tmp_path / "keras_home"), PYTHONPATH=str(REPO))  # no keras.json: Keras' default backend
    script = NO_TENSORFLOW + "import runpy\nrunpy.run_module('itnet_keras.fit', run_name='__main__')\n"
    for flags in ([], ["--verbose"]):
        result = subprocess.run([sys.executable, "-c", script, "--epochs", "1", *flags], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.count("Keras runs on tensorflow, which is not installed") == 1
        assert 'pip install -e ".[export]"' in result.stderr and "KERAS_BACKEND" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_a_tensorflow_run_resumes_under_jax(tmp_path):
    """A run folder is backend-neutral: one epoch under TensorFlow; under JAX its checkpoint
    restores the same logits and optimizer step, and the run trains on (how a CPU run's
    checkpoint can go on on a GPU machine that has no TensorFlow)."""
    from itnet_keras import fit

    assert keras.backend.backend() == "tensorflow"
    assert fit.main(["--limit", "16", "--epochs", "1", "--bn-batches", "0", "--output", str(tmp_path / "run")]) == 0
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    trained = keras.saving.load_model(tmp_path / "run" / "last.keras")
    np.save(tmp_path / "tf.npy", np.stack(trained.predict(x, verbose=0)))
    out = run_jax(NO_TENSORFLOW + """
        import numpy as np
        from itnet_keras import build_itnet, fit
        from itnet_keras.config import parse_config
        from itnet_keras.datasets import get_spec
        from itnet_keras.run_folder import load_checkpoint, prepare_folder
        config = prepare_folder(*parse_config(["--output", "run", "--resume"]))
        spec = get_spec(config.data)
        model = build_itnet(config.preset, num_classes=spec.num_classes)
        trained, _ = fit.compile_model(model, config, spec, steps_per_epoch=2)
        assert load_checkpoint("run/checkpoint.npz", trained)["epoch"] == 1
        print("iterations", int(trained.optimizer.iterations))
        print("max difference", np.abs(np.stack(model.predict(np.load("x.npy"), verbose=0)) - np.load("tf.npy")).max())
        assert fit.main(["--output", "run", "--resume", "--epochs", "2", "--bn-batches", "0"]) == 0
    """.replace("\n        ", "\n"), tmp_path)
    assert "iterations 2" in out  # 16 images, batch 8: the step count (and the schedule) carry over
    assert float(out.split("max difference ")[1].split()[0]) < 1e-4
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3  # header and two epochs
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["model"]["epochs_trained"] == 2


def test_jax_cpu_convs_give_the_keras_ops_values_and_gradients(tmp_path, monkeypatch):
    out = run_jax("""
        import os, jax, numpy as np
        from itnet_keras import convs
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 7, 9, 6)).astype("float32")
        loop_conv = lambda x, kernel: convs.conv(x, kernel, in_loop=True)
        for name, function, shape in (("conv3x3", loop_conv, (3, 3, 6, 5)), ("conv1x1", loop_conv, (1, 1, 6, 5)),
                                      ("depthwise", convs.depthwise_conv, (3, 3, 6, 1))):
            kernel = rng.normal(size=shape).astype("float32")
            forms = {}
            for form in ("ops", "cpu"):
                os.environ["ITNET_CONV_FORM"] = form
                # a new lambda each time: make_jaxpr caches the trace of a function it has seen
                custom = "custom_vjp" in str(jax.make_jaxpr(lambda x, kernel: function(x, kernel))(x, kernel))
                print("form", name, form, convs.cpu_form(), custom)
                y, vjp = jax.vjp(function, x, kernel)
                cotangent = np.random.default_rng(1).normal(size=y.shape).astype("float32")
                forms[form] = [y, *vjp(cotangent)]
            for part, a, b in zip(("value", "grad_x", "grad_kernel"), forms["ops"], forms["cpu"]):
                print(name, part, float(np.max(np.abs(a - b)) / np.max(np.abs(a))))
    """, tmp_path)
    forms = [line.split()[1:] for line in out.splitlines() if line.startswith("form ")]
    # the two forms really differ: `cpu` is the custom-gradient form, `ops` Keras' ops
    assert sorted(forms) == sorted([name, form, str(form == "cpu"), str(form == "cpu")]
                                   for name in ("conv3x3", "conv1x1", "depthwise") for form in ("ops", "cpu")), out
    errors = [line.split() for line in out.splitlines() if not line.startswith("form ")]
    assert len(errors) == 9, out
    for name, part, error in errors:
        assert float(error) < 1e-5, (name, part)
    monkeypatch.setenv("ITNET_CONV_FORM", "fast")
    with pytest.raises(ValueError, match="ITNET_CONV_FORM='fast': expected auto, ops or cpu"):
        convs.conv(np.zeros((1, 4, 4, 2), "float32"), np.zeros((3, 3, 2, 2), "float32"))


def test_fit_does_not_wait_for_each_step_on_jax(tmp_path):
    """Every batch hook of `fit`'s callbacks is async-safe, so Keras runs the hooks in worker
    threads and dispatches the next step without waiting for the last one's logs (one
    blocking hook would make Keras call all of them at once, on the main thread)."""
    out = run_jax("""
        import threading
        import keras
        from itnet_keras import fit
        from itnet_keras.config import parse_config

        class Probe(keras.callbacks.Callback):
            async_safe = True
            on_main = set()

            def on_train_batch_end(self, batch, logs=None):
                Probe.on_main.add(threading.current_thread() is threading.main_thread())

        fit.run(*parse_config(["--limit", "8", "--epochs", "1", "--bn-batches", "0", "--output", "run"]),
                callbacks=[Probe()])
        print("hooks on the main thread:", sorted(Probe.on_main))
    """, tmp_path)
    assert "hooks on the main thread: [False]" in out


def test_tensorboard_logs_hold_the_epoch_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from itnet_keras.callbacks import EpochTensorBoard

    callback = EpochTensorBoard(tmp_path)
    callback.on_train_begin()
    for epoch, loss in enumerate([2.0, 1.5]):
        callback.on_epoch_end(epoch, {"loss": loss, "output_1_miou": 0.25, "val_loss": loss + 1})
    callback.on_train_end()
    train = EventAccumulator(str(tmp_path / "train")).Reload()
    validation = EventAccumulator(str(tmp_path / "validation")).Reload()
    assert [(e.step, e.value) for e in train.Scalars("epoch_loss")] == [(0, 2.0), (1, 1.5)]
    assert [e.value for e in train.Scalars("epoch_output_1_miou")] == [0.25, 0.25]
    assert [e.value for e in validation.Scalars("epoch_loss")] == [3.0, 2.5]



def test_a_resumed_runs_tensorboard_shows_each_epoch_once(tmp_path, monkeypatch):
    """Epochs 0-2 logged, then a resume from the checkpoint of epoch 1 (0-based: it trains
    epochs 1 and 2 again): TensorBoard shows epoch 0 from the first run, 1 and 2 from the
    resume, once each (was: 1 and 2 twice). A run started again from nothing (its folder had
    no checkpoint) hides all of them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from itnet_keras.callbacks import EpochTensorBoard

    def scalars():
        return [(e.step, e.value) for e in EventAccumulator(str(tmp_path / "train")).Reload().Scalars("epoch_loss")]

    import time

    clock = [1.8e9]  # each start in a second of its own, as runs are: event files are named by the second
    monkeypatch.setattr(time, "time", lambda: clock[0])
    for first, losses in ((0, [3.0, 2.0, 1.0]), (1, [1.5, 0.5]), (0, [2.5])):
        clock[0] += 60
        callback = EpochTensorBoard(tmp_path, first)
        callback.on_train_begin()
        for epoch, loss in enumerate(losses, start=first):
            callback.on_epoch_end(epoch, {"loss": loss})
        callback.on_train_end()
        if first:
            assert len(list((tmp_path / "train").glob("events.out.tfevents.*"))) == 2
            assert scalars() == [(0, 3.0), (1, 1.5), (2, 0.5)]
    assert scalars() == [(0, 2.5)]

def test_evaluation_compiles_one_prediction_per_split(monkeypatch, tmp_path):
    """5 images in batches of 2: the last batch is padded, so the loop is traced once (an
    eager call traced it for every batch), and the classes are those of the model."""
    model = build_itnet("tiny", input_shape=(None, None, 3))
    dataset = make_dataset("builtin", "val", batch_size=2, limit=5)
    traces = []
    original = IterativeBlock.call
    monkeypatch.setattr(IterativeBlock, "call", lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    matrices, _ = split_confusion_matrices(dataset, lambda images: predict_classes(model, images, 2))
    assert len(traces) == 1
    labelled = sum(int((dataset[i][1] != dataset.spec.ignore_label).sum()) for i in range(len(dataset)))
    assert [int(m.sum()) for m in matrices] == [labelled] * 4  # the padding is not counted
    images, _ = dataset[2]
    assert images.shape[0] == 1
    expected = np.stack([np.argmax(np.asarray(o), -1) for o in model(images, training=False)])
    np.testing.assert_array_equal(predict_classes(model, images, 2), expected)


def _loss_and_gradients(remat, dropout, heads=False, eager=False):
    """Loss, gradients and the outputs' confusion matrices of one training step of `tiny`
    (some pixels ignored), on the model's outputs or, with `heads`, on `training_model`'s
    logits before their resize."""
    keras.utils.set_random_seed(1)
    model = build_itnet("tiny", num_classes=4, input_shape=(32, 32, 3), dropout=dropout)
    iterative_block(model).remat = remat
    trained = training_model(model) if heads else model
    rng = np.random.default_rng(0)
    images, labels = rng.random((2, 32, 32, 3), dtype=np.float32), rng.integers(0, 4, (2, 32, 32))
    labels[:, :5] = 255
    loss_fn = MaskedCrossEntropy(255, remat=remat, resize=heads)
    metrics = [SegmentationMeanIoU(4, 255, resize=heads) for _ in trained.outputs]

    def step():
        with tf.GradientTape() as tape:
            outputs = trained(images, training=True)
            loss = sum(loss_fn(labels, o) for o in outputs)
        for metric, output in zip(metrics, outputs):
            metric.update_state(labels, output)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, gradients = step() if eager else tf.function(step)()
    return float(loss), [np.asarray(g) for g in gradients], [m.confusion_matrix() for m in metrics]


@pytest.mark.parametrize("dropout, eager", [(0.0, False), (0.1, False), (0.0, True)])
def test_remat_gives_the_same_loss_and_gradients_tensorflow(dropout, eager):
    """Also eagerly (`run_eagerly=True`; was: every block weight's gradient doubled, as
    `recompute_grad` counted a variable passed in both as an input and as a variable read)."""
    loss, gradients, _ = _loss_and_gradients(False, dropout, eager=eager)
    remat_loss, remat_gradients, _ = _loss_and_gradients(True, dropout, eager=eager)
    assert remat_loss == pytest.approx(loss, rel=1e-6)
    assert len(gradients) == len(remat_gradients)
    for a, b in zip(gradients, remat_gradients):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_training_on_the_heads_logits_gives_the_outputs_numbers_tensorflow():
    """`fit --remat` trains `training_model` (the heads' logits at 1/8 of the input size; the
    loss and the mIoU resize them): the same loss, gradients and confusion matrices as the
    model's full-resolution outputs."""
    trained = training_model(build_itnet("tiny", input_shape=(32, 32, 3)))
    assert trained.output_names == ["output_1", "output_2", "output_3", "output_4"]
    assert [tuple(o.shape) for o in trained.outputs] == [(None, 4, 4, 4)] * 4
    loss, gradients, matrices = _loss_and_gradients(True, 0.1)
    heads_loss, heads_gradients, heads_matrices = _loss_and_gradients(True, 0.1, heads=True)
    assert heads_loss == pytest.approx(loss, rel=1e-6)
    assert len(gradients) == len(heads_gradients)
    for a, b in zip(gradients, heads_gradients):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert sum(int(m.sum()) for m in matrices) == 4 * 2 * 27 * 32  # every labelled pixel, per output
    for a, b in zip(matrices, heads_matrices):
        np.testing.assert_array_equal(b, a)


@pytest.mark.large  # 1.5 minutes on the 2-core machine, 7 under load: kept out of the default suite
def test_jax_remat_and_data_parallel(tmp_path):
    """JAX on 2 host devices: --remat, and with it training on the heads' logits, give the same
    loss and gradients, and --remat less memory in XLA's estimate; the shifted depthwise conv
    gives XLA's numbers; `fit --strategy mirrored` trains data parallel (the weights are
    replicated over both devices), and refuses a batch it cannot split."""
    out = run_jax("""
        import json, jax, numpy as np, keras
        from itnet_keras import build_itnet, fit
        from itnet_keras.lab.bench import compiled_memory
        from itnet_keras.losses import MaskedCrossEntropy
        from itnet_keras.model import iterative_block, training_model

        def loss_and_gradients(remat, heads=False):
            keras.utils.set_random_seed(1)
            model = build_itnet("tiny", num_classes=4, input_shape=(32, 32, 3), dropout=0.1)
            iterative_block(model).remat = remat
            model = training_model(model) if heads else model
            rng = np.random.default_rng(0)
            x, y = rng.random((2, 32, 32, 3), dtype=np.float32), rng.integers(0, 4, (2, 32, 32))
            trainable = [v.value for v in model.trainable_variables]
            rest = [v.value for v in model.non_trainable_variables]

            def loss(trainable):
                outputs, _ = model.stateless_call(trainable, rest, x, training=True)
                return sum(MaskedCrossEntropy(255, remat=remat, resize=heads)(y, o) for o in outputs)

            return jax.value_and_grad(loss)(trainable)

        loss, grads = loss_and_gradients(False)
        for name, (other_loss, other_grads) in (("remat", loss_and_gradients(True)),
                                                ("heads", loss_and_gradients(True, heads=True))):
            print(name + "_loss", float(loss), float(other_loss))
            print(name + "_grad", max(float(np.max(np.abs(a - b))) for a, b in zip(grads, other_grads)),
                  max(float(np.max(np.abs(a))) for a in grads))
        memory = [compiled_memory("tiny", 8, False, (64, 64), remat)["temp_mb"] for remat in (False, True)]
        print("temp", *memory)

        seen = {}
        class Devices(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen["devices"] = len(self.model.trainable_variables[0].value.sharding.device_set)
        # 13 images: one training batch, and validation ends with 5 images (padded to 8, not split 2.5 a device)
        config, given = fit.parse_config(["--limit", "13", "--epochs", "1", "--strategy", "mirrored",
                                          "--output", "dp"])
        fit.run(config, given, callbacks=[Devices()])
        print("devices", len(jax.devices()), seen["devices"])
        import contextlib, io
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            print("refused", fit.main(["--batch-size", "3", "--strategy", "mirrored", "--output", "dp3"]))
        print(errors.getvalue())
    """, tmp_path, devices=2)
    values = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()
              if line.split() and line.split()[0] in ("remat_loss", "remat_grad", "heads_loss", "heads_grad", "temp",
                                                      "devices", "refused")}
    for name in ("remat", "heads"):  # --remat, and training on the heads' logits with --remat
        assert values[f"{name}_loss"][0] == pytest.approx(values[f"{name}_loss"][1], rel=1e-6)
        assert values[f"{name}_grad"][0] < 1e-4 * values[f"{name}_grad"][1]
    assert values["temp"][1] < values["temp"][0]
    assert values["devices"] == [2, 2]
    assert values["refused"] == [2]
    assert "--batch-size 3: --strategy mirrored splits every batch over the 2 visible devices" in out
    assert json.loads((tmp_path / "dp" / "evaluation.json").read_text())["outputs"]
