"""A `fit` run's folder (its files are listed in fit.py): the lock that one run holds, the
resolved configuration, the checkpoint that `--resume` continues from, the model files.
Everything here is written atomically (files.py); docs/reliability.md tests what survives."""

import contextlib
import dataclasses
import fcntl
import io
import json
import math
import os
from pathlib import Path
from time import monotonic

import keras
import numpy as np
from keras import ops

from itnet_keras.config import FitConfig, flag_of
from itnet_keras.console import uninterrupted
from itnet_keras.files import atomic_path, write_atomic
from itnet_keras.model import float32_model


class ConfigError(ValueError):
    """A flag value is wrong; the message names the flag."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss, a damaged checkpoint); earlier checkpoints are kept."""


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


def read_run_config(folder, resolved=False, flag="--resume"):
    """The `FitConfig` saved in `folder/config.json` (with `resolved`, also the model arguments
    it resolved to); a missing or damaged file is named in the error (after `flag`)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} does not exist (the run folder is incomplete)")
    try:
        record = json.loads(path.read_text())
        config = FitConfig(**record["fit"])
        return (config, dict(record["model"])) if resolved else config
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is damaged ({type(error).__name__}: {error}): it should hold the run's "
                          "configuration as written by the run") from None


RESUME_MAY_CHANGE = {"epochs", "data_dir", "workers", "bn_batches", "checkpoint_every"}


def kept_config(config, given, folder, may_change, what, flag="--resume"):
    """The configuration saved in `folder` with the flags in `given` that `may_change` (a
    ConfigError names the first other flag given with a different value): a resumed run's,
    or a branch's (`branch.branch`)."""
    saved, model = read_run_config(folder, resolved=True, flag=flag)
    for name in sorted(given - {"output", "resume", "branch_from", "verbose", *may_change}):
        value = getattr(saved, name)
        if value is None and name in FitConfig.MODEL_FIELDS:  # the preset's: the value it resolved to
            value = model.get(name)
        if getattr(config, name) != value:
            allowed = ", ".join(flag_of(n) for n in sorted(may_change))
            raise ConfigError(f"{flag_of(name)} {getattr(config, name)!r} differs from the run's saved value "
                              f"{value!r}; {what} keeps its configuration (only {allowed} may change)")
    changed = {name: getattr(config, name) for name in may_change & given}
    return dataclasses.replace(saved, output=config.output, resume=True, verbose=config.verbose, **changed)


def prepare_folder(config, given):
    """Check the (locked) run folder; returns the configuration to run with.

    A resumed run keeps its saved configuration; only `--epochs` (the new total), where and
    how the data is read (`--data-dir`, `--workers`: a run moved to another machine), the
    batch-norm recalibration after training (`--bn-batches`) and `--checkpoint-every` may change.
    A new run's folder holds no run (a branch's source is checked by `branch.branch`).
    """
    folder = Path(config.output)
    checkpoint = folder / "checkpoint.npz"
    if config.resume:
        if config.branch_from is not None:
            raise ConfigError(f"--branch-from {config.branch_from}: it starts a new run in --output; "
                              "--resume continues the one there: give one of them")
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: {checkpoint} does not exist (nothing to resume)")
        resumed = kept_config(config, given, folder, RESUME_MAY_CHANGE, "a resumed run")
        done = committed_epoch(folder)
        if done > resumed.epochs:
            raise ConfigError(f"--epochs {resumed.epochs}: the run in {folder} has already completed {done} epochs")
        return resumed
    if checkpoint.exists():
        raise ConfigError(f"--output {folder} already holds a run: pass --resume to continue it, "
                          "or choose another folder")
    return config


def save_checkpoint(path, model, state):
    arrays = {f"model/{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer/{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    _write_checkpoint(path, arrays, state)


def record_state(path, state):
    """Replace the checkpoint's state, its weights as they are (the model in memory may be past
    the checkpoint's epoch: a caller's callback can stop training between checkpoints)."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files if key != "state"}
    _write_checkpoint(path, arrays, state)


def _write_checkpoint(path, arrays, state):
    buffer = io.BytesIO()
    np.savez(buffer, state=np.array(json.dumps(state)), **arrays)
    write_atomic(path, buffer.getvalue(), "wb")


def _damaged(path, error):
    return TrainingError(f"{path} is damaged ({type(error).__name__}: {error}): no run can resume or branch from it")


def load_checkpoint(path, model):
    """Restore weights and optimizer state in place; returns the saved progress."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        state = json.loads(str(arrays.pop("state")))
    except Exception as error:  # zipfile, zlib, numpy and json errors of a truncated or damaged file
        raise _damaged(path, error) from None
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


def committed_epoch(folder):
    """The epoch `folder`'s checkpoint holds, None without one (TrainingError if damaged)."""
    path = Path(folder) / "checkpoint.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return json.loads(str(data["state"]))["epoch"]
    except Exception as error:  # as in load_checkpoint
        raise _damaged(path, error) from None


def trim_log(path, epochs_done, to=None):
    """Drop log rows of epochs that a resumed run repeats, and a last row cut short by a crash
    (no line end); the rows kept stay byte for byte (Keras' CSVLogger ends them with CRLF, as
    the rows it appends next). `to`: write them there instead (a branch's log, `copy_log`)."""
    if path.is_file():
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
        try:
            kept = lines[:1] + [line for line in lines[1:] if int(line.split(b",")[0]) < epochs_done]
        except ValueError as error:
            raise TrainingError(f"{path} is damaged ({error}): fix or remove its bad rows (the first column is "
                                "the epoch), or delete it to start a new log") from None
        write_atomic(to or path, b"".join(kept), "wb")


def save_model(model, path):
    """`model` as a .keras file, always in float32 (`float32_model`: a file of a model trained
    under a mixed-precision policy loads, predicts and exports as a float32 model)."""
    with atomic_path(path, ".tmp.keras") as tmp:
        float32_model(model).save(tmp)


def checkpoint_epochs(every, epochs):
    """The 1-based epochs after which a run validates and checkpoints: every `every`-th
    (counted from the run's start, so a resumed run keeps the same ones) and the last."""
    return [epoch for epoch in range(1, epochs + 1) if epoch % every == 0 or epoch == epochs]


def pending_model(folder, name, epoch, recalibrated=False):
    """Where epoch `epoch`'s `name` (last.keras, best.keras) waits for the checkpoint that
    commits it (`recalibrated`: the same file with its batch norms recalibrated, `fit`'s end)."""
    return Path(folder) / f".{Path(name).stem}-epoch{epoch}{'-recalibrated' if recalibrated else ''}.pending.keras"


def promote_pending(folder, state):
    """Rename the model files the checkpoint's `state` commits into place, remove any other
    pending one: each was written before the checkpoint that records it, and only that commit
    makes it last.keras or best.keras (a kill in between leaves a file of an epoch the resume
    repeats, or a recalibration the resume does again). Also removes temporary files left by a kill."""
    folder = Path(folder)
    committed = {pending_model(folder, "last.keras", state["epoch"]): "last.keras",
                 pending_model(folder, "best.keras", state["best_epoch"]): "best.keras"}
    done = state.get("recalibrated")
    if done:
        committed[pending_model(folder, done["file"], done["epoch"], recalibrated=True)] = done["file"]
    for path in folder.glob(".*.pending.keras"):
        if path in committed:
            os.replace(path, folder / committed[path])
        else:
            path.unlink(missing_ok=True)
    # What a killed writer left of its temporary files (`files.temporary_path`); the caller holds
    # the folder's lock, so no other process is writing them.
    for path in folder.glob(".*.*-*.tmp*"):
        path.unlink(missing_ok=True)


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch in `epochs` (1-based; `checkpoint_epochs`): last.keras and best.keras
    (of `saved`, the full model over the trained one's layers) under pending names, then
    checkpoint.npz (the commit point), then the pending files renamed into place
    (`promote_pending`). A NaN loss stops training at any epoch, NaN weights at one to be
    saved (the last step of an epoch can diverge after its loss was counted).

    The state's `train_seconds` adds up the wall time of the committed epochs (training and
    validation) over every start of the run; it stays None for a run whose checkpoint was
    written before it was recorded."""

    def __init__(self, folder, monitor, state, saved, epochs):
        super().__init__()
        self.folder, self.monitor, self.state, self.saved = Path(folder), monitor, state, saved
        self.epochs = set(epochs)
        self.nan_epoch, self.nan_in = None, None
        self.began, self.uncommitted = None, 0.0  # seconds of the epochs since the last commit

    def on_epoch_begin(self, epoch, logs=None):
        self.began = monotonic()

    def _diverged(self, epoch, what):
        self.nan_epoch, self.nan_in = epoch + 1, what
        self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.uncommitted += monotonic() - self.began
        if not math.isfinite(logs.get("loss", float("nan"))):
            return self._diverged(epoch, "loss")
        if epoch + 1 not in self.epochs:
            return
        if not all(np.isfinite(ops.convert_to_numpy(v)).all() for v in self.model.variables):
            return self._diverged(epoch, "weights")
        save_model(self.saved, pending_model(self.folder, "last.keras", epoch + 1))
        score = logs.get(self.monitor)
        if score is not None and score > self.state["best"]:
            self.state.update(best=float(score), best_epoch=epoch + 1)
            save_model(self.saved, pending_model(self.folder, "best.keras", epoch + 1))
        self.state["epoch"] = epoch + 1
        if self.state.get("train_seconds") is not None:
            self.state["train_seconds"] += self.uncommitted
        self.uncommitted = 0.0
        with uninterrupted():  # a stop between the two would leave the committed files pending
            save_checkpoint(self.folder / "checkpoint.npz", self.model, self.state)
            promote_pending(self.folder, self.state)
