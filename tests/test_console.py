"""Progress (bar on a terminal, lines elsewhere), quiet TensorFlow startup, fast `--help`."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from itnet_keras import console

ROOT = Path(__file__).resolve().parents[1]
# Every command, as a user runs it.
COMMANDS = [["-m", f"itnet_keras.{name}"] for name in
            ("fit", "evaluate", "predict", "costs", "download", "recalibrate", "lab.bench", "lab.bench_input",
             "lab.notebooks")]
COMMANDS += [[f"export/{name}.py"] for name in ("convert", "measure_accuracy", "measure_latency", "measure_parts",
                                                "graph_memory")]
# Lines TensorFlow, absl, oneDNN, CUDA and LiteRT print when they start.
STARTUP_NOISE = ("absl::InitializeLog", "I0000 ", "E0000 ", "W0000 ", "oneDNN", "cuda", "CUDA",
                 "To enable the following instructions", "XNNPACK")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_redraws_one_line(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = console.Progress(4, "epoch 1/2", leave=False)
    for _ in range(4):
        bar.update(loss=0.5)
        time.sleep(0.11)  # redraws are at least 0.1 s apart
    bar.close()
    text = screen.getvalue()
    assert "\n" not in text and text.count("\r") >= 5  # drawn in place, then erased
    assert "epoch 1/2 [" in text and "4/4" in text and "loss 0.5000" in text
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == ""


def test_progress_elsewhere_prints_a_line_every_n_steps(monkeypatch, capsys):
    monkeypatch.setattr(console.Progress, "MIN_SECONDS", 0.0)
    bar = console.Progress(10, "evaluate", every=3, unit="batches")
    for _ in range(10):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "evaluate: 3/10 batches", "evaluate: 6/10 batches", "evaluate: 9/10 batches", "evaluate: 10/10 batches"]


def test_progress_elsewhere_stays_silent_in_short_loops(capsys):
    assert list(console.progress(range(5), "quick")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # under MIN_SECONDS: a log gets no lines


def test_int8_calibration_shows_progress(monkeypatch, capsys):
    from itnet_keras import build_itnet
    from itnet_keras.export.tflite import calibration_batches

    monkeypatch.setattr(console.Progress, "MIN_SECONDS", 0.0)
    model = build_itnet("tiny", input_shape=(32, 32, 3), num_iterations=2)
    images = np.zeros((3, 32, 32, 3), np.float32)
    # per image: outputs, encode, anytime at n = 1 and n = N, then step, finish and upsample per iteration
    assert len(list(calibration_batches(model, images)())) == 3 * (2 + 2 + 3 * 2)
    assert "int8 calibration: 3/3 images" in capsys.readouterr().err


def _run(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help_answers_before_tensorflow_loads(command):
    """`--help` answers without importing TensorFlow (whose import alone takes 5 s or more on
    a loaded machine). Asserted on `sys.modules`, not on a time, which a loaded machine
    stretches past any bound."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{command[-1]!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_{'module' if command[0] == '-m' else 'path'}({command[-1]!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    print('tensorflow loaded:', 'tensorflow' in sys.modules)\n")
    assert _run(["-c", probe]).stdout.strip().endswith("tensorflow loaded: False")
    result = _run([*command, "--help"])
    assert result.returncode == 0 and "usage:" in result.stdout
    # The description, where there is one, is the docstring's whole first paragraph (not a
    # sentence cut at its first line's end).
    description = result.stdout.split("\n\n")[1]
    if not description.endswith(":"):  # "options:" or "positional arguments:": none
        assert " ".join(description.split()).endswith((".", ")")), description


def test_startup_logs_only_with_verbose(tmp_path):
    args = ["-m", "itnet_keras.evaluate", str(tmp_path / "missing.keras"), "--output", str(tmp_path)]
    quiet = _run(args)
    assert quiet.returncode == 2
    assert quiet.stderr == f"error: model file {tmp_path / 'missing.keras'} does not exist\n"
    verbose = _run([*args, "--verbose"])
    assert verbose.returncode == 2 and any(noise in verbose.stderr for noise in STARTUP_NOISE)


def test_costs_command_is_quiet():
    result = _run(["-m", "itnet_keras.costs", "--preset", "tiny"])
    assert result.returncode == 0 and result.stdout.startswith("| output | MACs")
    assert result.stderr == ""


def test_export_script_is_quiet(tmp_path):
    result = _run(["export/convert.py", str(tmp_path / "missing.keras"), "--output", str(tmp_path / "x.tflite")])
    assert result.returncode == 2
    assert result.stderr == f"error: model file {tmp_path / 'missing.keras'} does not exist\n"


def test_uninterrupted_holds_a_signal_until_the_block_ends():
    """A Ctrl-C inside `uninterrupted()` lets the block finish, then interrupts as it would have."""
    import signal

    finished = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with console.uninterrupted():
                signal.raise_signal(signal.SIGINT)
                finished.append(True)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
