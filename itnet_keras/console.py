"""What a command shows while it works: TensorFlow's startup kept quiet, and progress.

- `quiet_startup(verbose)`: an entry point calls it once its arguments are parsed and
  before TensorFlow is imported; the startup lines that TensorFlow, absl, oneDNN and CUDA
  print then stay hidden (`--verbose` shows them).
- `quietly()`: a block whose C++ log lines (TensorFlow's converter, LiteRT) stay hidden
  unless `--verbose`.
- `Progress(total, label)` / `progress(items, label)`: a bar redrawn in place on a
  terminal; elsewhere (a log file, a pipe) a line every `every` steps, at most one per
  `MIN_SECONDS`.
- `stoppable()`: a block in which SIGTERM, like Ctrl-C, raises a `KeyboardInterrupt`
  (`Stopped`), so that cleanup runs; `stopped_by(interrupt)` names it and gives the exit code.
- `uninterrupted()`: a block that Ctrl-C and SIGTERM do not cut: they take effect at its end
  (a commit of several files, which a stop between them would leave half done).

Imports nothing of the package, and nothing heavy at import time.
"""

import contextlib
import importlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings

# TensorFlow's C++ logs below ERROR; read by TensorFlow when it loads.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}


def add_verbose_flag(parser):
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's startup logs and warnings")


@contextlib.contextmanager
def captured_stderr(keep_python=True):
    """Send what C++ code writes to the process's stderr (file descriptor 2) to a temporary
    file while the block runs, and show it only if the block raises. With `keep_python`,
    Python's `sys.stderr` (progress, warnings) keeps writing where it did."""
    sys.stderr.flush()
    saved = os.dup(2)
    swapped = keep_python and sys.stderr is sys.__stderr__
    if swapped:
        sys.stderr = open(os.dup(saved), "w", buffering=1, errors="backslashreplace")
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if swapped:
            sys.stderr.close()
            sys.stderr = sys.__stderr__
        if failed:
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
        capture.close()


_verbose = False


def quietly():
    """`captured_stderr()`, unless the command runs with `--verbose`: for the C++ lines that
    TensorFlow's converter and LiteRT print as they work."""
    return contextlib.nullcontext() if _verbose else captured_stderr()


def quiet_startup(verbose=False, modules=("keras",)):
    """Import `modules` (Keras imports TensorFlow, and TensorFlow finds its devices) without
    their startup lines, unless `verbose`; afterwards TensorFlow's and absl's Python
    loggers and TensorFlow's C++ logs print errors only. A module whose package is not
    installed is skipped (an optional one: whoever needs it says so); Keras without the
    backend it is set to stops the command with an error that says how to install one.

    Most startup lines come from C++ before any logger is set up (absl's "All log messages
    before absl::InitializeLog()", oneDNN, CUDA), so stderr itself is captured meanwhile.
    """
    global _verbose
    _verbose = verbose
    if not verbose:
        # TensorFlow's converter still uses the interpreter it deprecates (for int8 calibration).
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    # (captured with keep_python=False: loggers made meanwhile must write to fd 2 later)
    with contextlib.nullcontext() if verbose else captured_stderr(keep_python=False):
        for module in modules:
            _import(module)
        if "tensorflow" in sys.modules and not verbose:
            sys.modules["tensorflow"].config.list_physical_devices()  # CUDA's probe logs here
    if not verbose:
        for name in ("absl", "tensorflow"):
            logging.getLogger(name).setLevel(logging.ERROR)


# What installs each Keras backend: the package's extras where it has one.
BACKEND_INSTALLS = {
    "tensorflow": 'pip install -e ".[export]" (or ".[tensorflow-cuda]" on an NVIDIA GPU)',
    "jax": 'pip install -e ".[jax-cuda]" on an NVIDIA GPU, pip install "jax[cpu]" elsewhere',
    "torch": "pip install torch",
}


def _import(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:  # the module's own package missing, not one it needs
        missing = error.name or ""
        if module == "keras" and missing in BACKEND_INSTALLS:  # the backend itself, not a part of it
            print(f"error: Keras runs on {missing}, which is not installed ({error}); {BACKEND_INSTALLS[missing]} "
                  "installs it, or KERAS_BACKEND (or ~/.keras/keras.json) chooses an installed backend "
                  "(tensorflow is Keras' default; training and evaluation also run on jax)", file=sys.stderr)
            raise SystemExit(2) from None
        if missing.partition(".")[0] != module.partition(".")[0]:
            raise


# -- progress --------------------------------------------------------------------------


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"


class Progress:
    """Progress of a loop of `total` steps, on stderr.

    On a terminal: `label [#####.....] 12/64 0:05<0:21 loss 0.4121`, redrawn in place
    (at most 10 times a second), erased at `close()` unless `leave`. Otherwise: the line
    `label: 12/64 steps, 5s, loss 0.4121` every `every` steps (default: a tenth of the
    total) and at the last step, but none within `MIN_SECONDS` of the start or of the
    line before, so that short loops leave no lines in a log.
    """

    MIN_SECONDS = 10.0
    WIDTH = 24

    def __init__(self, total, label, every=None, unit="steps", leave=True):
        self.total, self.label, self.unit, self.leave = int(total), label, unit, leave
        self.every = every or max(1, math.ceil(self.total / 10))
        self.stream = sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.start = 0, time.monotonic()
        self.last_shown, self.drawn = self.start, False

    def update(self, steps=1, **values):
        """`steps` more done; `values` (e.g. loss=0.41) are shown beside the count, a value
        None as its name alone."""
        self.done += steps
        now = time.monotonic()
        elapsed = now - self.start
        fields = [k if v is None else f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in values.items()]
        if self.terminal:
            if now - self.last_shown < 0.1 and self.done < self.total:
                return
            filled = round(self.WIDTH * self.done / max(self.total, 1))
            left = elapsed / self.done * (self.total - self.done) if self.done else 0
            line = " ".join([f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}]",
                             f"{self.done}/{self.total}", f"{_clock(elapsed)}<{_clock(left)}", *fields])
            columns = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + line[:columns].ljust(columns))
            self.drawn = True
        elif (self.done % self.every == 0 or self.done == self.total) and now - self.last_shown >= self.MIN_SECONDS:
            line = ", ".join([f"{self.done}/{self.total} {self.unit}", f"{elapsed:.0f}s", *fields])
            self.stream.write(f"{self.label}: {line}\n")
        else:
            return
        self.stream.flush()
        self.last_shown = now

    def close(self):
        if self.terminal and self.drawn:
            columns = shutil.get_terminal_size().columns - 1
            self.stream.write("\n" if self.leave else "\r" + " " * columns + "\r")
            self.stream.flush()
            self.drawn = False


def progress(items, label, total=None, unit="steps"):
    """Yield from `items` while showing a `Progress` of them."""
    bar = Progress(len(items) if total is None else total, label, unit=unit)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so that cleanup runs."""


def _stop(signum, frame):
    raise Stopped()


@contextlib.contextmanager
def stoppable():
    """SIGTERM raises `Stopped` inside the block (by default it would end the process at once,
    leaving temporary files behind)."""
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted():
    """Ctrl-C and SIGTERM received inside the block are held until it ends, then delivered to
    the handlers in place before it (so they stop the process as they would have). Signals
    reach only the main thread: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {number: signal.signal(number, lambda signum, frame: held.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])


def stopped_by(interrupt):
    """("SIGTERM" or "Ctrl-C", the shell's exit code for it) of a `KeyboardInterrupt`."""
    if isinstance(interrupt, Stopped):
        return "SIGTERM", 128 + signal.SIGTERM
    return "Ctrl-C", 128 + signal.SIGINT
