"""`python -m itnet_keras.fit` end to end: artifacts, resume (also after SIGKILL), bad input."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from itnet_keras import build_itnet, console, evaluate, fit, fit_report, run_folder
from itnet_keras.batch_norm import moving_statistics, recalibrate, training_images
from itnet_keras.config import FitConfig, parse_config
from itnet_keras.datasets import get_spec
from itnet_keras.evaluate import load_itnet
from itnet_keras.fit import ConfigError, TrainingError
from itnet_keras.model import iterative_block
from itnet_keras.pipeline import make_dataset

ARTIFACTS = ["config.json", "checkpoint.npz", "last.keras", "best.keras", "log.csv", "tensorboard",
             "evaluation.json", "miou_over_macs.png", "predictions.png"]
# The tiny preset on 32 built-in 64x64 images: 4 batches of 8 per epoch.
# No batch-norm recalibration unless a test is about it (it compiles one more function per run).
SMALL_RUN = ["--limit", "32", "--epochs", "3", "--learning-rate", "3e-3", "--bn-batches", "0"]


def config_for(folder, *flags):
    return parse_config([*SMALL_RUN, "--output", str(folder), *flags])


def checkpoint_arrays(folder):
    with np.load(folder / "checkpoint.npz") as data:
        return {key: data[key] for key in data.files if key != "state"}, json.loads(str(data["state"]))


def log_rows(folder):
    with open(folder / "log.csv") as handle:
        return list(csv.DictReader(handle))


def test_fit_lowers_the_loss_writes_every_artifact_and_shows_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(console.Progress, "MIN_SECONDS", 0.0)
    assert fit.main([*SMALL_RUN, "--bn-batches", "4", "--output", str(tmp_path / "run")]) == 0
    folder = tmp_path / "run"
    for name in ARTIFACTS:
        assert (folder / name).exists(), name
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    losses = [float(row["loss"]) for row in log_rows(folder)]
    assert [int(row["epoch"]) for row in log_rows(folder)] == [0, 1, 2]
    assert losses[-1] < losses[0]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["fit"]["epochs"] == 3 and saved["model"]["num_iterations"] == 4
    report = json.loads((folder / "evaluation.json").read_text())
    assert [o["output"] for o in report["outputs"]] == [1, 2, 3, 4]
    for o in report["outputs"]:
        assert 0 <= o["miou"] <= 1 and o["macs"] > 0 and o["depth"] > 0
        assert set(o["iou_per_class"]) == {"background", "red-framed shape", "green-framed shape",
                                           "blue-framed shape"}
    # (below 0 when the outputs score under the chance level, the built-in data's majority class)
    assert report["normalized_auc"] == pytest.approx(report["auc"] / report["outputs"][-1]["macs"])
    state = checkpoint_arrays(folder)[1]
    scores = report["model"].pop("last_output_miou")
    kept = report["model"].pop("bn_recalibrated")
    assert report["model"].pop("train_seconds") == state["train_seconds"] > 0
    assert report["model"].pop("evaluate_seconds") > 0
    assert report["model"] == {"file": "best.keras", "epoch": state["best_epoch"], "epochs_trained": 3,
                               "bn_batches": 4, "augment": "paper", "output_weights": "all",
                               "precision": "float32"}
    # best.keras holds its batch norms recalibrated over 4 training batches of epoch 3 (the
    # next) if that scored higher on val at the last output, else the training's averages
    assert kept == (scores["recalibrated"] > scores["moving_averages"])
    assert report["outputs"][-1]["miou"] == scores["recalibrated" if kept else "moving_averages"]
    best, again = load_itnet(folder / "best.keras"), load_itnet(folder / "best.keras")
    train = make_dataset("builtin", "train", training=True, limit=32)
    recalibrate(again, training_images(train, 4, first_epoch=3))
    same = [np.allclose(np.array(saved), np.array(wanted), rtol=1e-5, atol=1e-6)
            for saved, wanted in zip(moving_statistics(best), moving_statistics(again))]
    assert all(same) if kept else not all(same)
    captured = capsys.readouterr()
    # Progress: 4 training and 4 validation batches per epoch; not a terminal, so (with
    # MIN_SECONDS 0) a line every batch; then val with the training's moving averages, the
    # recalibration, and val with its statistics.
    lines = [line.split(",")[0] for line in captured.err.splitlines()]
    val = [f"builtin val: {b}/4 batches" for b in range(1, 5)]
    assert lines[:24] == [f"epoch {e}/3: {b}/8 batches" for e in (1, 2, 3) for b in range(1, 9)]
    assert lines[24:] == [*val, *(f"batch-norm recalibration: {b}/4 batches" for b in range(1, 5)), *val]
    assert "loss" in captured.err.splitlines()[0] and "validation" in captured.err.splitlines()[7]
    # The end: the epoch best.keras comes from, and the val mIoU of every output.
    out = captured.out.splitlines()
    assert "epoch 3/3" in out[-10]
    assert out[-9] == f"best.keras is from epoch {state['best_epoch']} of 3"
    which = "recalibrated over 4 batches" if kept else "the training's moving averages"
    assert out[-8] == (f"its batch norms: {which} (val mIoU of the last output {scores['recalibrated']:.4f} recalibrated, "
                       f"{scores['moving_averages']:.4f} with the moving averages)")
    assert out[-7] == "val mIoU per output:"
    assert out[-6].split() == ["output", "mIoU", "MACs"]
    for line, o in zip(out[-5:-1], report["outputs"]):
        assert line.split()[:2] == [str(o["output"]), f"{o['miou']:.4f}"]
    assert out[-1] == f"normalized AUC of mIoU over MACs: {report['normalized_auc']:.4f}"

    # Resumed when finished (no epoch left), the run reports its file as before: a best.keras
    # recalibrated in place is recorded in the checkpoint (recalibrating it again would score
    # the same, and the report would call its batch norms the training's).
    assert (checkpoint_arrays(folder)[1].get("recalibrated") is not None) == kept
    assert fit.main(["--output", str(folder), "--resume"]) == 0
    again = json.loads((folder / "evaluation.json").read_text())["model"]
    assert (again["bn_recalibrated"], again["last_output_miou"], again["bn_batches"]) == (kept, scores, 4)

    # A recalibration that scores lower on val is not kept: the file stays as it was.
    def damaging(model, batches):
        for variable in moving_statistics(model):
            if variable.name.endswith("moving_mean"):
                variable.assign(variable + 10.0)

    monkeypatch.setattr(fit_report, "recalibrate", damaging)
    before = [np.array(v) for v in moving_statistics(load_itnet(folder / "best.keras"))]
    config = parse_config([*SMALL_RUN, "--bn-batches", "4", "--output", str(folder)])[0]
    _, result, record = fit_report._reported_model(folder / "best.keras", config, train,
                                            make_dataset("builtin", "val", limit=32), None)
    assert not record["bn_recalibrated"]
    assert record["last_output_miou"]["recalibrated"] < record["last_output_miou"]["moving_averages"]
    assert result["outputs"][-1]["miou"] == record["last_output_miou"]["moving_averages"]
    for wanted, saved in zip(before, moving_statistics(load_itnet(folder / "best.keras"))):
        np.testing.assert_array_equal(np.array(saved), wanted)


def test_output_weights_help_lists_the_schedules(capsys):
    from itnet_keras.losses import SCHEDULE_HELP

    with pytest.raises(SystemExit):
        fit.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "see itnet_keras" not in help_text
    for schedule in ("all", "thinned:K", "single:n", "last:m", "linear", "comma"):
        assert schedule in SCHEDULE_HELP and f"{schedule}" in help_text.split("--output-weights", 2)[2][:600]


@pytest.mark.parametrize("remat", [False, True], ids=["outputs", "remat-heads"])
def test_output_weights_reach_the_training_loss(remat):
    """`--output-weights single:4` trains the last output only: one step moves its head and
    leaves the other heads as they were (Adam moves nothing without a gradient); `all` moves
    every head. Through `fit.compile_model`, the loss `fit` trains."""
    for schedule, moved in (("single:4", [False, False, False, True]), ("all", [True] * 4)):
        keras.utils.set_random_seed(0)
        model = build_itnet("tiny", l2=0.0)
        config = FitConfig(output_weights=schedule, remat=remat, epochs=1)
        trained, weights = fit.compile_model(model, config, get_spec("builtin"), steps_per_epoch=1)
        assert list(weights) == ([0, 0, 0, 1] if schedule == "single:4" else [0.25] * 4)
        head = next(v for v in iterative_block(model).weights if v.path.endswith("head_kernel"))
        before = np.array(head)
        images, labels = make_dataset("builtin", "train", limit=8, output_names=trained.output_names)[0]
        trained.train_on_batch(images, labels)
        assert list(np.abs(np.array(head) - before).reshape(4, -1).max(1) > 0) == moved, schedule


@pytest.mark.parametrize("total", [20, 2000 * 45, 7])
def test_learning_rate_steps_after_70_and_85_percent_of_the_steps(total):
    schedule = fit.learning_rate_schedule(1e-3, total)
    rates = np.array(schedule(np.arange(total)))  # the rate of each update, by its 0-based step
    counts = [int(np.isclose(rates, rate).sum()) for rate in (1e-3, 1e-4, 1e-5)]
    assert counts == [7 * total // 10, 17 * total // 20 - 7 * total // 10, total - 17 * total // 20]


class Interrupt(keras.callbacks.Callback):
    """Stops the process's training after epoch `after` (1-based), as a crash would."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    fit.run(*config_for(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        fit.run(*config_for(tmp_path / "resumed"), callbacks=[Interrupt(after=2)])
    assert checkpoint_arrays(tmp_path / "resumed")[1]["epoch"] == 2
    assert not (tmp_path / "resumed" / "evaluation.json").exists()
    fit.run(*parse_config(["--output", str(tmp_path / "resumed"), "--resume"]))
    straight, straight_state = checkpoint_arrays(tmp_path / "straight")
    resumed, resumed_state = checkpoint_arrays(tmp_path / "resumed")
    assert straight_state.pop("train_seconds") > 0 and resumed_state.pop("train_seconds") > 0
    assert straight_state == resumed_state
    assert straight.keys() == resumed.keys()
    for key in straight:  # weights, moving statistics and the optimizer's moments and step
        np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert [row["epoch"] for row in log_rows(tmp_path / "resumed")] == ["0", "1", "2"]


def test_a_mirrored_run_resumes(tmp_path):
    """`--strategy mirrored` (TensorFlow's MirroredStrategy, one replica here) resumes: the
    optimizer's variables are made in the strategy's scope (was: RuntimeError, "Need to be
    inside strategy.scope()", on every --resume of such a run)."""
    fit.run(*config_for(tmp_path / "run", "--strategy", "mirrored", "--epochs", "1"))
    fit.run(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--epochs", "2"]))
    assert checkpoint_arrays(tmp_path / "run")[1]["epoch"] == 2


def test_checkpoint_every_k_epochs_and_the_last(tmp_path, monkeypatch):
    """`--checkpoint-every 2` of 5 epochs validates and checkpoints after epochs 2, 4 and 5; a
    run stopped in epoch 3 resumes from epoch 2 and repeats epoch 3. The training time recorded
    counts each of the 5 epochs once (a clock that says every epoch takes 10 s)."""
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(run_folder, "monotonic", lambda: next(clock))
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit.run(*config_for(folder, "--epochs", "5", "--checkpoint-every", "2"), callbacks=[Interrupt(after=3)])
    assert checkpoint_arrays(folder)[1]["epoch"] == 2
    assert checkpoint_arrays(folder)[1]["train_seconds"] == 20
    report = fit.run(*parse_config(["--output", str(folder), "--resume"]))
    state = checkpoint_arrays(folder)[1]
    assert state["epoch"] == 5 and state["best_epoch"] in (2, 4, 5)
    assert state["train_seconds"] == report["model"]["train_seconds"] == 50
    assert report["model"]["evaluate_seconds"] > 0
    rows = log_rows(folder)
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3", "4"]
    assert [row["val_output_4_miou"] != "NA" for row in rows] == [False, True, False, True, True]
    assert all(row["loss"] != "NA" for row in rows)


def test_resume_after_sigkill(tmp_path, capsys):
    """A run killed with SIGKILL mid-training resumes from its last completed epoch, at once
    (the OS released its lock). The run asks for more epochs than any machine trains before
    the kill, and the resume for two more than were done."""
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "itnet_keras.fit", "--limit", "32", "--output", str(folder)]
    process = subprocess.Popen(command + ["--epochs", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (folder / "checkpoint.npz").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.2)
    assert fit.main(["--output", str(folder), "--resume"]) == 2  # the folder is locked while it runs
    assert f"is in use by another run (process {process.pid})" in capsys.readouterr().err
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = checkpoint_arrays(folder)[1]["epoch"]
    assert 1 <= done < 1000
    # fit's own start-up quiets TensorFlow, not a variable this process (fit.main above) set
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(command + ["--resume", "--epochs", str(done + 2)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(noise in result.stderr for noise in ("absl::InitializeLog", "I0000 ", "E0000 ", "oneDNN"))
    assert checkpoint_arrays(folder)[1]["epoch"] == done + 2
    assert [int(row["epoch"]) for row in log_rows(folder)] == list(range(done + 2))
    assert (folder / "evaluation.json").is_file()


@pytest.mark.parametrize("sent, name, code", [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "Ctrl-C", 130)])
def test_sigterm_and_ctrl_c_stop_with_one_line_and_keep_the_checkpoint(tmp_path, sent, name, code):
    """Stopped mid-run, `fit` says so in one line (no traceback), exits as a shell expects,
    and leaves its checkpoint and no temporary file (SIGTERM no longer ends it at once)."""
    folder, log = tmp_path / "run", tmp_path / "stderr.txt"
    # more epochs than any machine trains before the signal
    command = [sys.executable, "-m", "itnet_keras.fit", "--limit", "32", "--epochs", "1000", "--output", str(folder)]
    with open(log, "w") as stderr:
        # SIGINT as a terminal sends it: a test run in the background (as CI may be) ignores it,
        # and so would the child, which inherits that.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 240
        while not (folder / "checkpoint.npz").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.2)
        process.send_signal(sent)
        assert process.wait(timeout=120) == code
    err = log.read_text()
    assert "Traceback" not in err
    epoch = checkpoint_arrays(folder)[1]["epoch"]
    assert err.splitlines()[-1] == (f"stopped by {name}: {folder} keeps the checkpoint of epoch {epoch}; "
                                    f"`python -m itnet_keras.fit --output {folder} --resume` goes on from there")
    assert 1 <= epoch < 1000
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_remat_trains_the_heads_logits_and_saves_the_full_model(tmp_path):
    """--remat fits `training_model` (the heads' 1/8-size logits; the losses and the mIoU
    resize them) and saves and evaluates the full model, outputs at the input size."""
    trained = {}

    class Trained(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            trained["name"], trained["outputs"] = self.model.name, self.model.output_names

    result = fit.run(*parse_config(["--limit", "8", "--epochs", "1", "--remat", "--bn-batches", "2", "--output", str(tmp_path / "run")]),
                     callbacks=[Trained()])
    assert trained == {"name": "itnet_training", "outputs": ["output_1", "output_2", "output_3", "output_4"]}
    assert 0 < float(log_rows(tmp_path / "run")[0]["val_output_4_miou"]) <= 1
    assert len(result["outputs"]) == 4
    saved = keras.models.load_model(tmp_path / "run" / "last.keras", compile=False)
    assert [tuple(o.shape) for o in saved(np.zeros((1, 64, 64, 3), "float32"))] == [(1, 64, 64, 4)] * 4


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("data_block").convs[0].kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    with pytest.raises(TrainingError, match="NaN in epoch 2.*checkpoint of epoch 1"):
        fit.run(*config_for(tmp_path / "run"), callbacks=[Poison()])
    arrays, state = checkpoint_arrays(tmp_path / "run")
    assert state["epoch"] == 1
    assert all(np.all(np.isfinite(a)) for a in arrays.values())
    assert (tmp_path / "run" / "last.keras").is_file()



def test_weights_that_diverge_in_an_epochs_last_step_are_not_checkpointed(tmp_path):
    """The epoch's loss is counted before each update: NaN weights after its last step leave
    it finite. The checkpoint checks the weights, stops, and keeps the epoch before (was: NaN
    weights committed, and every resume NaN at once)."""
    class PoisonLastStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == self.params["steps"] - 1:
                kernel = self.model.get_layer("data_block").convs[0].kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    with pytest.raises(TrainingError, match="weights became NaN in epoch 2.*checkpoint of epoch 1"):
        fit.run(*config_for(tmp_path / "run"), callbacks=[PoisonLastStep()])
    arrays, state = checkpoint_arrays(tmp_path / "run")
    assert state["epoch"] == 1 and all(np.all(np.isfinite(a)) for a in arrays.values())
    assert float(log_rows(tmp_path / "run")[1]["loss"]) < float("inf")  # epoch 2's loss was finite


def test_one_iteration_trains_and_reports_its_one_output(tmp_path):
    """N = 1 (the model without a loop): its targets are the labels, not a dict of one (was: a
    TypeError in the first step), and its metric is logged as output_1_miou, which chooses
    best.keras as for any N (Keras names a single output's metric without the output)."""
    report = fit.run(*config_for(tmp_path / "run", "--num-iterations", "1", "--epochs", "2"))
    assert [o["output"] for o in report["outputs"]] == [1] and 0 < report["outputs"][0]["miou"] <= 1
    assert report["model"]["file"] == "best.keras"
    assert list(log_rows(tmp_path / "run")[0]) == ["epoch", "loss", "output_1_miou", "val_loss", "val_output_1_miou"]

def test_existing_run_needs_resume_and_resume_keeps_the_configuration(tmp_path):
    fit.run(*config_for(tmp_path / "run", "--epochs", "1"))
    with pytest.raises(ConfigError, match="--resume"):
        fit.run(*config_for(tmp_path / "run", "--epochs", "1"))
    with pytest.raises(ConfigError, match="--batch-size 4 differs"):
        fit.run(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--batch-size", "4"]))
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit.run(*parse_config(["--output", str(tmp_path / "empty"), "--resume"]))
    # a model flag the run left to its preset: the value the preset resolved to is its value
    # (was: "--width 8 differs from the run's saved value None" for the tiny preset's own 8)
    resumed = run_folder.prepare_folder(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--width", "8"]))
    assert resumed.resume and resumed.width is None
    with pytest.raises(ConfigError, match="--width 9 differs from the run's saved value 8"):
        run_folder.prepare_folder(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--width", "9"]))


def test_a_branch_goes_on_from_another_runs_checkpoint_with_another_recipe(tmp_path):
    """`--branch-from` starts a new run where another stands. With no recipe flag changed it
    ends with the weights of the source resumed (same schedule, same batches); with another
    `--augment` and `--output-weights` it records the change in config.json and evaluation.json,
    also after its own resume. The source is only read."""
    source = tmp_path / "source"
    fit.run(*config_for(source, "--epochs", "2"))
    files = {path.name: path.read_bytes() for path in source.iterdir() if path.is_file()}
    fit.run(*parse_config(["--branch-from", str(source), "--output", str(tmp_path / "same"), "--epochs", "3"]))
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    fit.run(*parse_config(["--output", str(resumed), "--resume", "--epochs", "3"]))
    same, same_state = checkpoint_arrays(tmp_path / "same")
    for key, value in checkpoint_arrays(resumed)[0].items():
        np.testing.assert_allclose(same[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert same_state["branch"] == {"from": str(source), "epoch": 2, "changed": {"--epochs": [2, 3]}}

    other = tmp_path / "other"
    result = fit.run(*parse_config(["--branch-from", str(source), "--output", str(other), "--epochs", "3",
                                    "--augment", "strong", "--output-weights", "last:1"]))
    record = {"from": str(source), "epoch": 2,
              "changed": {"--augment": ["paper", "strong"], "--epochs": [2, 3], "--output-weights": ["all", "last:1"]}}
    saved = json.loads((other / "config.json").read_text())
    assert saved["branch"] == record and result["model"]["branch"] == record
    assert (saved["fit"]["augment"], saved["fit"]["output_weights"], saved["fit"]["branch_from"]) == (
        "strong", "last:1", str(source))
    assert [row["epoch"] for row in log_rows(other)] == ["0", "1", "2"]  # the source's rows, then its own
    assert [row["loss"] for row in log_rows(other)][:2] == [row["loss"] for row in log_rows(source)]
    weights, state = checkpoint_arrays(other)
    assert (state["epoch"], state["best_epoch"]) == (3, 3)  # best.keras is the branch's own
    assert not all(np.allclose(weights[key], same[key]) for key in weights)  # the recipe changed the training

    rows = log_rows(other)
    fit.run(*parse_config(["--output", str(other), "--resume", "--epochs", "4"]))  # the branch's own checkpoint
    assert json.loads((other / "config.json").read_text())["branch"] == record
    assert checkpoint_arrays(other)[1]["epoch"] == 4 and log_rows(other)[:3] == rows and len(log_rows(other)) == 4
    assert evaluate.main([str(other / "last.keras"), "--limit", "8", "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["model"]["branch"] == record
    assert {path.name: path.read_bytes() for path in source.iterdir() if path.is_file()} == files

    third = fit.run(*parse_config(["--branch-from", str(other), "--output", str(tmp_path / "third"), "--epochs", "5",
                                   "--augment", "paper"]))  # a branch of a branch keeps the lineage
    assert third["model"]["branch"] == {"from": str(other), "epoch": 4, "source_branch": record,
                                        "changed": {"--augment": ["strong", "paper"], "--epochs": [4, 5]}}


def test_a_branch_that_cannot_be_made_is_named_and_leaves_no_folder(tmp_path, capsys):
    source = tmp_path / "source"
    fit.run(*config_for(source, "--epochs", "2"))
    capsys.readouterr()  # its progress lines, printed when a batch is slow (a busy machine)
    branch = ["--output", str(tmp_path / "branch"), "--branch-from"]
    for flags, culprit in [
        ([*branch, str(tmp_path / "none")], f"--branch-from {tmp_path / 'none'}: {tmp_path / 'none'}/checkpoint.npz "
                                             "does not exist"),
        ([*branch, str(source), "--batch-size", "4"], "--batch-size 4 differs from the run's saved value 8; a branch "
                                                      "keeps its configuration (only --augment, --bn-batches"),
        ([*branch, str(source)], f"--epochs 2: the run in {source} has completed 2 epochs; a branch trains more "
                                 "(--epochs M, M > 2)"),
        ([*branch, ""], "--branch-from '': expected the folder of a run"),
        ([*branch, str(source), "--resume"], f"--branch-from {source}: it starts a new run in --output; --resume"),
    ]:
        assert fit.main(flags) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and culprit in err, (flags, err)
        assert not (tmp_path / "branch").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit.run(*parse_config(["--output", str(source), "--branch-from", str(tmp_path / "branch")]))

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            kernel = self.model.get_layer("data_block").convs[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    with pytest.raises(TrainingError, match="NaN in epoch 3, before the branch's first checkpoint, so .* holds no "
                                            "checkpoint: the same command branches again"):
        fit.run(*parse_config([*branch, str(source), "--epochs", "3"]), callbacks=[Poison()])
    assert not (tmp_path / "branch" / "checkpoint.npz").exists()


def test_resume_on_another_machine_may_read_the_data_elsewhere(tmp_path, camvid_fixture):
    """A run moved to another machine (e.g. from this CPU to a GPU) finds its data at another
    path: --data-dir and --workers may change on --resume, and the new values are saved (so
    may --bn-batches, which acts after training)."""
    flags = ["--data", "camvid", "--scale", "4", "--batch-size", "2", "--epochs", "1", "--preset", "tiny",
             "--bn-batches", "0"]  # no recalibration yet: the resumed run's report recalibrates its best file
    fit.run(*parse_config([*flags, "--data-dir", str(camvid_fixture), "--output", str(tmp_path / "run")]))
    moved = tmp_path / "elsewhere"
    camvid_fixture.rename(moved)
    report = fit.run(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--epochs", "2", "--data-dir",
                                    str(moved), "--workers", "2", "--bn-batches", "3"]))
    saved = run_folder.read_run_config(tmp_path / "run")
    assert (saved.data_dir, saved.workers, saved.epochs, saved.bn_batches) == (str(moved), 2, 2, 3)
    assert report["model"]["bn_batches"] == 3
    assert checkpoint_arrays(tmp_path / "run")[1]["epoch"] == 2


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"--output {blocker}/run: cannot write"):
        fit.run(*config_for(blocker / "run"))
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("flags, culprit", [
    (["--data", "imagenet"], "--data: invalid choice: 'imagenet'"),
    (["--epochs", "many"], "--epochs: invalid int value: 'many'"),
    (["--bn-placement", "after"], "--bn-placement: invalid choice"),
    (["--weight-sharing", "maybe"], "--weight-sharing: 'maybe': expected true or false"),
    (["--augment", "heavy"], "--augment: invalid choice: 'heavy'"),
    (["--preset", "huge"], "--preset: invalid choice: 'huge'"),
])
def test_unknown_flag_values_name_the_flag(flags, culprit, capsys):
    with pytest.raises(SystemExit):
        fit.main(flags)
    assert culprit in capsys.readouterr().err


@pytest.mark.parametrize("flags, culprit", [
    (["--output-weights", "thinned:0"], "--output-weights: output weight schedule 'thinned:0'"),
    (["--crop", "big"], "--crop 'big': expected HEIGHTxWIDTH"),
    (["--crop", "4x4"], "--crop '4x4': expected at least 8x8"),
    (["--width", "1"], "--width 1: expected"),
    (["--bn-batches", "-1"], "--bn-batches -1: expected an integer >= 0"),
    # values that only the data can refuse (was: named without the flag)
    (["--crop", "100x100"], "--crop 100x100 for builtin: expected at most the image size 64x64"),
    (["--scale", "3"], "--scale 3 for builtin: expected a positive integer that divides the image size 64x64"),
    (["--limit", "4"], "--batch-size 8: builtin train has 4 samples: expected at least batch_size 8 "
                       "for training (the last incomplete batch is dropped) (--limit 4)"),
])
def test_bad_values_give_one_clear_error(tmp_path, flags, culprit, capsys):
    assert fit.main([*SMALL_RUN, "--output", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no stray run folder


def test_augment_recipe_is_saved_kept_on_resume_and_recorded_in_evaluations(tmp_path):
    folder = tmp_path / "run"
    result = fit.run(*config_for(folder, "--epochs", "1", "--augment", "strong"))
    assert json.loads((folder / "config.json").read_text())["fit"]["augment"] == "strong"
    assert result["model"]["augment"] == "strong" and result["model"]["output_weights"] == "all"
    with pytest.raises(ConfigError, match="--augment 'paper' differs from the run's saved value 'strong'"):
        fit.run(*parse_config(["--output", str(folder), "--resume", "--augment", "paper"]))
    result = fit.run(*parse_config(["--output", str(folder), "--resume", "--epochs", "2"]))
    assert run_folder.read_run_config(folder).augment == "strong" and result["model"]["augment"] == "strong"
    assert evaluate.main([str(folder / "last.keras"), "--limit", "8", "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["model"]["augment"] == "strong"
    from itnet_keras.augment import RECIPES

    field = next(f for f in dataclasses.fields(FitConfig) if f.name == "augment")
    assert field.metadata["choices"] == RECIPES  # the flag offers what the pipeline knows
    with pytest.raises(ConfigError, match="--augment 'heavy': expected one of paper, strong"):
        fit.run(FitConfig(augment="heavy", output=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_mixed_precision_trains_in_bfloat16_and_saves_float32_models(tmp_path):
    """`--precision mixed_bfloat16` trains the layers in bfloat16 (weights float32); every saved
    .keras file is a float32 model with the checkpoint's weights (it loaded and predicted in
    bfloat16 before), the global dtype policy is left as it was, the evaluation records the
    precision, and a resume keeps it."""
    computed = {}

    class Computed(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            computed["dtype"] = iterative_block(self.model).compute_dtype

    folder = tmp_path / "run"
    result = fit.run(*config_for(folder, "--epochs", "1", "--precision", "mixed_bfloat16"), callbacks=[Computed()])
    assert computed["dtype"] == "bfloat16" and keras.config.dtype_policy().name == "float32"
    assert result["model"]["precision"] == "mixed_bfloat16"  # evaluation.json's record of the training
    assert run_folder.read_run_config(folder).precision == "mixed_bfloat16"
    arrays, _ = checkpoint_arrays(folder)
    weights = [arrays[key] for key in sorted(arrays) if key.startswith("model/")]
    for name in ("last.keras", "best.keras"):
        saved = keras.models.load_model(folder / name, compile=False)
        assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}, name
        assert len(saved.variables) == len(weights)
        for variable, array in zip(saved.variables, weights):
            if "seed_generator" in variable.path:  # dropout's seeds: no .keras file keeps them
                continue
            np.testing.assert_array_equal(np.asarray(variable), array, err_msg=f"{name}: {variable.path}")
    with pytest.raises(ConfigError, match="--precision 'float32' differs from the run's saved value 'mixed_bfloat16'"):
        fit.run(*parse_config(["--output", str(folder), "--resume", "--precision", "float32"]))
    computed.clear()
    fit.run(*parse_config(["--output", str(folder), "--resume", "--epochs", "2"]), callbacks=[Computed()])
    assert computed["dtype"] == "bfloat16"  # a run keeps its precision: evaluation.json's record holds


def test_flags_come_from_the_config_dataclass():
    config, given = parse_config(["--preset", "camvid_shared", "--width", "30", "--weight-sharing", "false"])
    assert isinstance(config, FitConfig) and given == {"preset", "width", "weight_sharing"}
    assert config.model_overrides() == {"width": 30, "weight_sharing": False}
    assert config.epochs == FitConfig().epochs


def test_evaluate_command(tmp_path, capsys):
    fit.run(*config_for(tmp_path / "run", "--epochs", "1"))
    out = tmp_path / "eval"
    assert evaluate.main([str(tmp_path / "run" / "last.keras"), "--limit", "16", "--output", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["images"] == 16 and len(report["outputs"]) == 4
    assert (out / "miou_over_macs.png").is_file() and (out / "predictions.png").is_file()
    assert evaluate.main([str(tmp_path / "missing.keras"), "--output", str(out)]) == 2
    assert "missing.keras does not exist" in capsys.readouterr().err
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    assert evaluate.main([str(tmp_path / "plain.keras"), "--output", str(out)]) == 2
    assert "not an ItNet" in capsys.readouterr().err
    # an --output that is a file (was: "[Errno 17] File exists", no flag named)
    model = str(tmp_path / "run" / "last.keras")
    assert evaluate.main([model, "--limit", "8", "--output", str(tmp_path / "plain.keras")]) == 2
    assert f"error: --output {tmp_path / 'plain.keras'}: a file, not a folder" in capsys.readouterr().err
    # a config.json naming a dataset this version does not know (was: "unknown dataset", not where it came from)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["fit"]["data"] = "camvidx"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert evaluate.main([model, "--output", str(out)]) == 2
    assert f"error: {tmp_path / 'run' / 'config.json'}: unknown dataset 'camvidx'" in capsys.readouterr().err
    assert evaluate.main([model, "--data", "builtin", "--limit", "8", "--output", str(out)]) == 0  # --data decides


@pytest.fixture(autouse=True)
def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    yield
