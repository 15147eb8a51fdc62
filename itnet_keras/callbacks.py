"""The Keras callbacks of a `fit` run beside its checkpoint (`run_folder.RunCheckpoint`):
progress over each epoch's batches, one line per epoch, TensorBoard scalars without
TensorFlow, and a stop at a NaN loss.

The two with batch hooks are `async_safe`: Keras then calls those hooks from worker
threads, with the step's logs converted to Python numbers there, and goes on to dispatch the
next step. A batch hook that is not async-safe makes Keras convert the logs at once, which
waits for the step to finish: a host-device sync after every step, so the host's work of
the next step (the batch, the dispatch) no longer overlaps the device's (JAX and torch; on
TensorFlow Keras calls every hook at once). Keras waits for every pending hook before
`on_epoch_end` and `on_test_end`.
"""

import math
import threading
import time
from pathlib import Path

import keras

from itnet_keras.console import Progress

# tensorboardX is imported where used: it is optional (without it, no TensorBoard logs).


class EpochProgress(keras.callbacks.Callback):
    """A `console.Progress` over each epoch's training and validation batches, with the loss
    (of the latest batch whose hook has run: hooks may run out of order)."""

    async_safe = True

    def __init__(self, epochs, train_steps, val_steps, validated):
        super().__init__()
        self.epochs, self.train_steps, self.val_steps, self.validated = epochs, train_steps, val_steps, set(validated)
        self.lock = threading.Lock()

    def on_epoch_begin(self, epoch, logs=None):
        steps = self.train_steps + (self.val_steps if epoch + 1 in self.validated else 0)
        self.bar = Progress(steps, f"epoch {epoch + 1}/{self.epochs}", unit="batches", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        with self.lock:
            self.bar.update(loss=float((logs or {}).get("loss", float("nan"))))

    def on_test_batch_end(self, batch, logs=None):
        with self.lock:
            self.bar.update(validation=None)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class EpochSummary(keras.callbacks.Callback):
    """One short line per epoch: time, loss and the mIoU of the first and last output (on val
    too after an epoch that validates)."""

    def __init__(self, epochs, names):
        super().__init__()
        self.epochs, self.first, self.last = epochs, names[0], names[-1]

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}

        def miou(prefix):
            return " ".join(f"{logs.get(f'{prefix}{n}_miou', float('nan')):.3f}" for n in (self.first, self.last))

        validated = f"val_{self.last}_miou" in logs
        print(f"epoch {epoch + 1}/{self.epochs} {time.perf_counter() - self.start:.1f}s: "
              f"loss {logs.get('loss', float('nan')):.4f}, mIoU of {self.first} and {self.last}: "
              f"train {miou('')}" + (f", val {miou('val_')}" if validated else ""), flush=True)


class EpochTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars for TensorBoard, written with tensorboardX's event files, which need no
    TensorFlow (Keras' `TensorBoard` callback imports it): `train/` and `validation/` event
    files with Keras' tags (`epoch_loss`, `epoch_output_1_miou`, ...). Without tensorboardX
    installed it says so once and writes nothing; training goes on.

    Each epoch's events are on disk when `on_epoch_end` returns (tensorboardX's `SummaryWriter`
    writes from a thread of its own and flushes every two minutes: a killed run lost them), so
    `fit` runs it before the checkpoint, like log.csv.

    A run starts at `first_epoch` (0-based: its checkpoint's epoch, 0 for a new run), and
    TensorBoard hides what earlier event files hold from that epoch on (the session start that
    tensorboardX's `purge_step` writes): the epochs past the checkpoint that a resume trains
    again, and everything of a run that stopped before its first checkpoint and starts again."""

    def __init__(self, folder, first_epoch=0):
        super().__init__()
        self.folder, self.first_epoch, self.writers = Path(folder), first_epoch, None

    def on_train_begin(self, logs=None):
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            from tensorboardX.summary import scalar
        except ImportError:
            print(f"note: {self.folder} is not written: TensorBoard logs need tensorboardX "
                  "(pip install tensorboardX)", flush=True)
            return
        self._event, self._scalar = Event, scalar
        self.writers = {}
        for part in ("train", "validation"):
            (self.folder / part).mkdir(parents=True, exist_ok=True)
            # A file name of the start's own: one started in the second an earlier one began would
            # reuse its name, and truncate its file.
            writer = EventsWriter(str(self.folder / part / "events"), f".after-epoch{self.first_epoch}")
            # (its first event, the file version, EventsWriter writes itself)
            writer.write_event(Event(wall_time=time.time(), step=self.first_epoch,
                                     session_log=SessionLog(status=SessionLog.START)))
            writer.flush()
            self.writers[part] = writer

    def on_epoch_end(self, epoch, logs=None):
        if self.writers is None:
            return
        for key, value in (logs or {}).items():
            part, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            summary = self._scalar(f"epoch_{tag}", float(value))
            self.writers[part].write_event(self._event(wall_time=time.time(), step=epoch, summary=summary))
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in (self.writers or {}).values():
            writer.close()
        self.writers = None


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at a batch whose loss is not finite (with async dispatch, a step or a
    few later); `RunCheckpoint` then keeps the last good epoch."""

    async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True
