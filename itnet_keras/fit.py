"""Train an ItNet with one loss per output: `python -m itnet_keras.fit [flags]`.

With no flags it trains the tiny preset on the built-in dataset (a few minutes on
2 CPU cores). The run folder (`--output`) receives:

    run.lock           held (fcntl.flock) by the one run using the folder; the OS releases it
                       when the process ends, however it ends
    config.json        the resolved configuration and model arguments
    checkpoint.npz     weights + optimizer state + progress, rewritten after every epoch
    last.keras, best.keras   the latest model and the best one (val mIoU of the last output);
                       at the end the reported one's batch norms are recalibrated (--bn-batches)
    log.csv, tensorboard/    per-epoch logs
    evaluation.json, miou_over_macs.png, predictions.png   the final evaluation (on val)

All files are written atomically; `--resume` continues from the last completed epoch
with the same optimizer state, learning-rate schedule and batches. `--resume --epochs M`
sets a new total (also of a finished run); the learning-rate steps move to 70% and 85%
of the new total (see docs/reliability.md).
"""

import contextlib
import dataclasses
import fcntl
import gc
import io
import json
import math
import os
import sys
import time
from pathlib import Path

from itnet_keras.cli import parse_size
from itnet_keras.config import FitConfig, flag_of, parse_config
from itnet_keras.console import Progress, progress, quiet_startup

if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(parse_config(sys.argv[1:])[0].verbose)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from itnet_keras.batch_norm import recalibrate, training_images  # noqa: E402
from itnet_keras.datasets import check_split  # noqa: E402
from itnet_keras.evaluate import format_outputs, load_itnet, training_summary, write_report  # noqa: E402
from itnet_keras.files import atomic_path, write_atomic  # noqa: E402
from itnet_keras.losses import MaskedCrossEntropy, output_weights  # noqa: E402
from itnet_keras.metrics import SegmentationMeanIoU  # noqa: E402
from itnet_keras.model import build_itnet, iterative_block, model_args, output_names, training_model  # noqa: E402
from itnet_keras.pipeline import SyncEpoch, make_dataset  # noqa: E402

# Imported where used: TensorFlow (`--strategy mirrored` on that backend only) and
# tensorboardX (optional: without it, training goes on without TensorBoard logs).


class ConfigError(ValueError):
    """A flag value is wrong; the message names the flag."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); earlier checkpoints are kept."""


# -- the run folder ------------------------------------------------------------------


LOCK_FILE = "run.lock"


@contextlib.contextmanager
def locked_folder(folder):
    """Hold an exclusive lock on the run folder (created if missing) while the block runs.

    The lock is `fcntl.flock` on `folder/run.lock`, which holds the owner's process id;
    the OS releases it when the process ends, however it ends (a SIGKILLed run can be
    resumed at once). A second run fails at once and touches nothing. A folder created
    here is removed again if the block fails before anything but the lock was written.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"--output {folder}: cannot write there ({error.strerror or error})") from error
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(lock, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"--output {folder} is in use by another run (process {owner}): wait for it "
                              "to end, or choose another folder") from None
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        try:
            yield folder
        except BaseException:
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
            raise
    finally:
        os.close(lock)


def read_run_config(folder):
    """The `FitConfig` saved in `folder/config.json`; a damaged file is named in the error."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} does not exist (the run folder is incomplete)")
    try:
        return FitConfig(**json.loads(path.read_text())["fit"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is damaged ({type(error).__name__}: {error}): it should hold the run's "
                          "configuration as written by the run") from None


RESUME_MAY_CHANGE = {"epochs", "data_dir", "workers", "bn_batches"}


def prepare_folder(config, given):
    """Check the (locked) run folder; returns the configuration to run with.

    A resumed run keeps its saved configuration; only `--epochs` (the new total), where and
    how the data is read (`--data-dir`, `--workers`: a run moved to another machine) and the
    batch-norm recalibration after training (`--bn-batches`) may change.
    """
    folder = Path(config.output)
    checkpoint = folder / "checkpoint.npz"
    if config.resume:
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: {checkpoint} does not exist (nothing to resume)")
        saved = read_run_config(folder)
        for name in given - {"output", "resume", "verbose", *RESUME_MAY_CHANGE}:
            if getattr(config, name) != getattr(saved, name):
                raise ConfigError(f"{flag_of(name)} {getattr(config, name)!r} differs from the "
                                  f"run's saved value {getattr(saved, name)!r}; a resumed run keeps its configuration "
                                  "(only --epochs, --data-dir, --workers and --bn-batches may change)")
        changed = {name: getattr(config, name) for name in RESUME_MAY_CHANGE & given}
        return dataclasses.replace(saved, output=config.output, resume=True, verbose=config.verbose, **changed)
    if checkpoint.exists():
        raise ConfigError(f"--output {folder} already holds a run: pass --resume to continue it, "
                          "or choose another folder")
    return config


def save_checkpoint(path, model, state):
    arrays = {f"model/{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer/{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    buffer = io.BytesIO()
    np.savez(buffer, state=np.array(json.dumps(state)), **arrays)
    write_atomic(path, buffer.getvalue(), "wb")


def load_checkpoint(path, model):
    """Restore weights and optimizer state in place; returns the saved progress."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        state = json.loads(str(arrays.pop("state")))
    except Exception as error:  # zipfile, zlib, numpy and json errors of a truncated or damaged file
        raise TrainingError(f"{path} is damaged ({type(error).__name__}: {error}): the run cannot be resumed "
                            "from it") from None
    model.optimizer.build(model.trainable_variables)
    for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        keys = sorted(k for k in arrays if k.startswith(prefix + "/"))
        if len(keys) != len(variables):
            raise TrainingError(f"{path}: {len(keys)} {prefix} arrays, the model has {len(variables)}")
        for key, variable in zip(keys, variables):
            if tuple(arrays[key].shape) != tuple(variable.shape):
                raise TrainingError(f"{path}: {key} has shape {arrays[key].shape} where the model's {variable.path} "
                                    f"has {tuple(variable.shape)}: the checkpoint is not of this model")
            variable.assign(arrays[key])
    return state


def save_model(model, path):
    with atomic_path(path, ".tmp.keras") as tmp:
        model.save(tmp)


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: last.keras, best.keras (of `saved`, the full model over the trained
    one's layers), then checkpoint.npz (the commit point)."""

    def __init__(self, folder, monitor, state, saved):
        super().__init__()
        self.folder, self.monitor, self.state, self.saved = Path(folder), monitor, state, saved
        self.nan_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not math.isfinite(logs.get("loss", float("nan"))):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        save_model(self.saved, self.folder / "last.keras")
        score = logs.get(self.monitor)
        if score is not None and score > self.state["best"]:
            self.state.update(best=float(score), best_epoch=epoch + 1)
            save_model(self.saved, self.folder / "best.keras")
        self.state["epoch"] = epoch + 1
        save_checkpoint(self.folder / "checkpoint.npz", self.model, self.state)


class EpochProgress(keras.callbacks.Callback):
    """A `console.Progress` over each epoch's training and validation batches, with the loss."""

    def __init__(self, epochs, steps):
        super().__init__()
        self.epochs, self.steps = epochs, steps

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = Progress(self.steps, f"epoch {epoch + 1}/{self.epochs}", unit="batches", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(loss=float((logs or {}).get("loss", float("nan"))))

    def on_test_batch_end(self, batch, logs=None):
        self.bar.update(validation=None)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class EpochSummary(keras.callbacks.Callback):
    """One short line per epoch: time, loss and the mIoU of the first and last output."""

    def __init__(self, epochs, names):
        super().__init__()
        self.epochs, self.first, self.last = epochs, names[0], names[-1]

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}

        def miou(prefix):
            return " ".join(f"{logs.get(f'{prefix}{n}_miou', float('nan')):.3f}" for n in (self.first, self.last))

        print(f"epoch {epoch + 1}/{self.epochs} {time.perf_counter() - self.start:.0f}s: "
              f"loss {logs.get('loss', float('nan')):.4f}, mIoU of {self.first} and {self.last}: "
              f"train {miou('')}, val {miou('val_')}", flush=True)


class EpochTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars for TensorBoard, written with tensorboardX, which needs no TensorFlow
    (Keras' `TensorBoard` callback imports it): `train/` and `validation/` event files with
    Keras' tags (`epoch_loss`, `epoch_output_1_miou`, ...). Without tensorboardX installed it
    says so once and writes nothing; training goes on."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.writers = Path(folder), None

    def on_train_begin(self, logs=None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            print(f"note: {self.folder} is not written: TensorBoard logs need tensorboardX "
                  "(pip install tensorboardX)", flush=True)
            return
        self.writers = {part: SummaryWriter(str(self.folder / part)) for part in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        if self.writers is None:
            return
        for key, value in (logs or {}).items():
            part, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self.writers[part].add_scalar(f"epoch_{tag}", float(value), epoch)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in (self.writers or {}).values():
            writer.close()
        self.writers = None


class StopOnNaN(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True


def _trim_log(path, epochs_done):
    """Drop log rows of epochs that a resumed run repeats."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",")[0]) < epochs_done]
        write_atomic(path, "".join(kept))


# -- the run -------------------------------------------------------------------------


def compile_model(model, config, spec, steps_per_epoch):
    """Compile the model `fit` trains with one loss per output and the step schedule; returns
    it and the output weights. That model is `model`, or with `--remat` `training_model(model)`:
    the heads' logits, which the losses and the mIoU metrics resize (docs/benchmarks.md)."""
    heads = config.remat
    trained = training_model(model) if heads else model
    names = trained.output_names
    try:
        weights = output_weights(config.output_weights, len(names))
    except ValueError as error:
        raise ConfigError(f"--output-weights: {error}") from error
    total = config.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(1, int(0.7 * total)), max(2, int(0.85 * total))],
        [config.learning_rate, config.learning_rate * 0.1, config.learning_rate * 0.01],
    )
    trained.compile(
        optimizer=keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999),
        loss={name: MaskedCrossEntropy(spec.ignore_label, remat=config.remat, resize=heads) for name in names},
        loss_weights=dict(zip(names, weights)),
        metrics={name: [SegmentationMeanIoU(spec.num_classes, spec.ignore_label, resize=heads, name="miou")]
                 for name in names},
    )
    return trained, weights


def _datasets(config):
    crop = None
    if config.crop is not None:
        try:
            crop = parse_size(config.crop)
        except Exception as error:
            raise ConfigError(f"--crop {config.crop!r}: expected HEIGHTxWIDTH") from error
    common = dict(data_dir=config.data_dir, scale=config.scale, limit=config.limit, batch_size=config.batch_size)
    train = make_dataset(config.data, "train", training=True, seed=config.seed, crop=crop,
                         workers=config.workers, augment=config.augment, **common)
    val = make_dataset(config.data, "val", **common)
    return train, val


def _strategy(config):
    """None, or for `--strategy mirrored` data parallel over all visible devices (each batch
    split across them): `tf.distribute.MirroredStrategy` on TensorFlow,
    `keras.distribution.DataParallel` on JAX."""
    if config.strategy == "default":
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    if backend != "jax":
        raise ConfigError(f"--strategy mirrored: not available on the {backend} backend (TensorFlow or JAX)")
    devices = keras.distribution.list_devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"--batch-size {config.batch_size}: --strategy mirrored splits every batch over the "
                          f"{len(devices)} visible devices; expected a multiple of {len(devices)}")
    return keras.distribution.DataParallel(devices=devices)


def _scope(strategy):
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _build(config, spec):
    """The model; a bad model flag is named as the flag."""
    try:
        return build_itnet(config.preset, num_classes=spec.num_classes, **config.model_overrides())
    except ValueError as error:
        for name in config.model_overrides():
            if str(error).startswith(f"{name}="):
                raise ConfigError(f"{flag_of(name)} {getattr(config, name)!r}: "
                                  f"{str(error).split(': ', 1)[1]}") from None
        raise


def run(config, given=frozenset(), callbacks=()):
    """Train (or resume) per `config`; returns the final evaluation (see `evaluate`).

    `given` names the flags set on the command line (a resumed run checks them against
    its saved configuration); `callbacks` are extra Keras callbacks, run after ours.
    The run holds the folder's lock throughout (see `locked_folder`).
    """
    try:
        config.check_numbers()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    with locked_folder(config.output):
        return _run(prepare_folder(config, set(given)), callbacks)


def _run(config, callbacks):
    folder = Path(config.output)
    keras.utils.set_random_seed(config.seed)
    train, val = _datasets(config)
    check_split(train.split)  # every image and label, before the first step
    check_split(val.split)
    spec = train.spec
    strategy = _strategy(config)
    with _scope(strategy):
        model = _build(config, spec)
        iterative_block(model).remat = config.remat
        names = output_names(len(model.outputs))
        train.output_names = val.output_names = names
        trained, weights = compile_model(model, config, spec, len(train))  # `model` is the one saved
    state = {"epoch": 0, "best": -1.0, "best_epoch": None}
    if config.resume:
        state = load_checkpoint(folder / "checkpoint.npz", trained)
        if state["epoch"] > config.epochs:
            raise ConfigError(f"--epochs {config.epochs}: the run in {folder} has already completed "
                              f"{state['epoch']} epochs")
        _trim_log(folder / "log.csv", state["epoch"])
    resolved = {"fit": dataclasses.asdict(config), "model": model_args(model), "dataset": spec.name}
    write_atomic(folder / "config.json", json.dumps(resolved, indent=1))
    checkpoint = RunCheckpoint(folder, f"val_{names[-1]}_miou", state, model)
    callbacks = [
        SyncEpoch(train), StopOnNaN(), checkpoint, EpochProgress(config.epochs, len(train) + len(val)),
        EpochSummary(config.epochs, names),
        keras.callbacks.CSVLogger(str(folder / "log.csv"), append=config.resume),
        EpochTensorBoard(folder / "tensorboard"),
        *callbacks,
    ]
    if state["epoch"] < config.epochs:
        # JAX's distribution splits the batches only inside its scope; TensorFlow's strategy needs none here.
        with _scope(strategy if keras.backend.backend() == "jax" else None):
            trained.fit(train, validation_data=val, epochs=config.epochs, initial_epoch=state["epoch"],
                        shuffle=False, callbacks=callbacks, verbose=0)
        # A training stopped mid-epoch leaves tf.data's generator iterator in a reference
        # cycle; freed at exit, it prints "[[{{node PyFunc}}]]" errors. Free it now.
        gc.collect()
    if checkpoint.nan_epoch is not None:
        if state["epoch"] == 0:
            raise TrainingError(f"the loss became NaN in epoch {checkpoint.nan_epoch}, before any epoch completed, "
                                f"so {folder} holds no checkpoint: start the run again (a lower --learning-rate?)")
        raise TrainingError(f"the loss became NaN in epoch {checkpoint.nan_epoch}; training stopped and the "
                            f"checkpoint of epoch {state['epoch']} in {folder} is kept")
    best = folder / ("best.keras" if (folder / "best.keras").is_file() else "last.keras")
    model = load_itnet(best)
    if config.bn_batches:  # the reported file, its batch norms recalibrated (batch_norm.py)
        recalibrate(model, progress(training_images(train, config.bn_batches, first_epoch=config.epochs),
                                    "batch-norm recalibration", total=config.bn_batches, unit="batches"))
        save_model(model, best)
    source = {"file": best.name, "epoch": state["best_epoch"] if best.name == "best.keras" else state["epoch"],
              "epochs_trained": state["epoch"], "bn_batches": config.bn_batches,
              **training_summary(dataclasses.asdict(config))}
    return write_report(model, val, folder, label=config.preset, loss_weights=weights, source=source)


def main(argv=None):
    config, given = parse_config(argv)
    quiet_startup(config.verbose)
    try:
        result = run(config, given)
    except (ConfigError, TrainingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    source = result["model"]
    print(f"{source['file']} is from epoch {source['epoch']} of {source['epochs_trained']}; val mIoU per output:")
    print(format_outputs(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
