"""The checklist of docs/reliability.md: bad input and concurrent use, one test per row.

(The download rows are in test_download.py, those of export/measure_accuracy.py in test_export.py
and test_export_android.py.)
"""

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from test_tools import load_script
from test_fit import Interrupt

from itnet_keras import build_itnet, datasets, evaluate, files, fit, fit_report, run_folder
from itnet_keras.config import parse_config
from itnet_keras.datasets import DatasetError, load_split
from itnet_keras.fit import ConfigError, TrainingError

# The tiny preset on 16 built-in images at scale 2 (32x32): 2 batches of 8 per epoch.
SMALL = ["--limit", "16", "--epochs", "1", "--scale", "2", "--bn-batches", "0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run folder (trained at --scale 2), to copy and damage."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    fit.run(*parse_config([*SMALL, "--output", str(folder)]))
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# -- 1. one run per folder ------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_fails_fast_and_touches_nothing(run_copy, tmp_path, capsys):
    before = snapshot(run_copy)
    with open(run_copy / "run.lock", "a") as lock:  # as a running fit holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert fit.main(["--output", str(run_copy), "--resume"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        assert fit.main([*SMALL, "--batch-size", "4", "--output", str(run_copy)]) == 2
        assert "is in use by another run" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_temporary_files_have_unique_names(tmp_path, monkeypatch):
    """Two writers of one file never share a temporary name (no shared `last.tmp.keras`)."""
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(a).name), real_replace(a, b)))
    files.write_atomic(tmp_path / "config.json", "{}")
    files.write_atomic(tmp_path / "config.json", "{}")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    run_folder.save_model(model, tmp_path / "last.keras")
    run_folder.save_model(model, tmp_path / "last.keras")
    assert len(set(renamed)) == 4 and all(f".{os.getpid()}-" in name for name in renamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "last.keras"]


# -- 2. bad data is found before the first step ----------------------------------------


class CountBatches(keras.callbacks.Callback):
    batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        CountBatches.batches += 1


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _label_value(path, value):
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = value
    Image.fromarray(label).save(path)


def _label_size(path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)


@pytest.mark.parametrize("damage, file, message", [
    (_truncate, "val/0001TP_000001.png", "cannot read image camvid/val/0001TP_000001.png"),
    (lambda p: _label_value(p, 12), "valannot/0001TP_000001.png", "label 12 in camvid/valannot/0001TP_000001.png"),
    (_label_size, "trainannot/0001TP_000005.png", "but label camvid/trainannot/0001TP_000005.png is 10x10"),
])
def test_bad_data_is_found_before_the_first_step(tmp_path, write_camvid, damage, file, message):
    root = write_camvid(tmp_path / "camvid", counts={"train": 8, "val": 2}, size=(32, 48))
    damage(root / file)
    CountBatches.batches = 0
    config = parse_config(["--data", "camvid", "--data-dir", str(root), "--epochs", "1", "--scale", "4",
                           "--output", str(tmp_path / "run")])
    with pytest.raises(DatasetError, match=message):
        fit.run(*config, callbacks=[CountBatches()])
    assert CountBatches.batches == 0
    assert not (tmp_path / "run").exists()  # the folder this run created is gone again


def test_model_flags_are_checked_before_the_data_is_read(tmp_path, write_camvid):
    """An output-weight schedule that does not fit the model is refused before every image is
    decoded (was: after the whole check of the data, seconds to minutes)."""
    root = write_camvid(tmp_path / "camvid", counts={"train": 8, "val": 2}, size=(32, 48))
    _truncate(root / "val/0001TP_000001.png")
    config = parse_config(["--data", "camvid", "--data-dir", str(root), "--epochs", "1", "--scale", "4",
                           "--output-weights", "1,2", "--output", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="--output-weights: "):
        fit.run(*config)


def test_a_resume_on_data_of_another_size_is_refused(tmp_path, write_camvid):
    """The learning-rate steps and the batch order of a resumed run count on its batches an
    epoch: a --data-dir whose train split has another size is named (was: resumed silently)."""
    root = write_camvid(tmp_path / "camvid", counts={"train": 8, "val": 2}, size=(32, 48))
    flags = ["--data", "camvid", "--scale", "4", "--batch-size", "2", "--bn-batches", "0", "--output", str(tmp_path / "run")]
    fit.run(*parse_config([*flags, "--data-dir", str(root), "--epochs", "1"]))
    fewer = tmp_path / "fewer"
    shutil.copytree(root, fewer)
    lines = (fewer / "train.txt").read_text().splitlines()
    (fewer / "train.txt").write_text("\n".join(lines[:6]) + "\n")
    _truncate(fewer / "val/0001TP_000001.png")  # found after the steps: those are checked before any decoding
    with pytest.raises(ConfigError, match=f"--data-dir {fewer}: its train split gives 3 batches an epoch, but the "
                                          "run's 1 epochs took 4 steps"):
        fit.run(*parse_config(["--output", str(tmp_path / "run"), "--resume", "--epochs", "2", "--data-dir", str(fewer)]))


def test_cityscapes_check_reads_headers_and_finds_a_truncated_image(tmp_path, write_cityscapes):
    root = write_cityscapes(tmp_path / "cityscapes", splits=("val",))
    split = load_split("cityscapes", "val", root)
    datasets.check_split(split)
    _truncate(split.samples[2][0])
    with pytest.raises(DatasetError, match=r"cannot read image cityscapes/leftImg8bit/val/bremen/\S+: "):
        datasets.check_split(split)


def test_large_splits_report_progress(tmp_path, write_camvid, monkeypatch, capsys):
    from itnet_keras import console

    monkeypatch.setattr(console.Progress, "MIN_SECONDS", 0.0)  # a line at every tenth, however quick
    root = write_camvid(tmp_path / "camvid", counts={"train": 20}, size=(8, 8))
    datasets.check_split(load_split("camvid", "train", root), large=20)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("checking camvid train: 2/20 images and labels, ") and len(lines) == 10
    assert lines[-1].startswith("checking camvid train: 20/20 images and labels, ")
    datasets.check_split(load_split("camvid", "train", root), large=21)
    assert capsys.readouterr().err == ""  # small splits are checked quietly


# -- 3. evaluate refuses wrong models ------------------------------------------------


def test_evaluate_infers_the_dataset_from_the_class_count(tmp_path, write_camvid):
    root = write_camvid(tmp_path / "camvid", counts={"val": 2}, size=(36, 48))
    build_itnet("tiny", num_classes=11).save(tmp_path / "camvid_model.keras")
    out = tmp_path / "eval"
    assert evaluate.main([str(tmp_path / "camvid_model.keras"), "--data-dir", str(root), "--scale", "4",
                          "--output", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["dataset"] == "camvid" and report["input_size"] == [90, 120]


def test_evaluate_refuses_a_split_without_labels(tmp_path, write_cityscapes, capsys):
    """Cityscapes' public test labels are all "unlabeled": an mIoU of 0.0 would mean nothing."""
    root = write_cityscapes(tmp_path / "cityscapes", cities=("berlin",), splits=("test",))
    for label in (root / "gtFine" / "test" / "berlin").glob("*_labelIds.png"):
        Image.fromarray(np.zeros((64, 128), np.uint8)).save(label)
    build_itnet("tiny", num_classes=19).save(tmp_path / "cityscapes_model.keras")
    assert evaluate.main([str(tmp_path / "cityscapes_model.keras"), "--data", "cityscapes", "--data-dir", str(root),
                          "--split", "test", "--scale", "8", "--output", str(tmp_path / "eval")]) == 2
    assert "cityscapes test: no labelled pixel in its 2 images (every label is the ignore value 255)" in \
        capsys.readouterr().err
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_refuses_a_class_count_mismatch(finished_run, tmp_path, camvid_fixture, capsys):
    assert evaluate.main([str(finished_run / "last.keras"), "--data", "camvid", "--data-dir", str(camvid_fixture),
                          "--output", str(tmp_path / "eval")]) == 2
    assert "--data camvid: 11 classes, but" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    # the dataset from the run's config.json: named as its source (was: blamed on a --data not given)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    record = json.loads((run / "config.json").read_text())
    record["fit"]["data"] = "camvid"
    (run / "config.json").write_text(json.dumps(record))
    assert evaluate.main([str(run / "last.keras"), "--output", str(tmp_path / "eval")]) == 2
    assert (f"error: {run / 'config.json'} records --data camvid: 11 classes, but {run / 'last.keras'} has 4: "
            "pass --data to name the model's dataset" in capsys.readouterr().err)
    assert not (tmp_path / "eval").exists()


def test_evaluate_uses_the_recorded_training_scale_or_warns(finished_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main([str(finished_run / "last.keras"), "--limit", "8", "--output", str(out)]) == 0
    assert json.loads((out / "evaluation.json").read_text())["input_size"] == [32, 32]  # --scale 2 recorded
    assert "warning" not in capsys.readouterr().err
    assert evaluate.main([str(finished_run / "last.keras"), "--limit", "8", "--scale", "1",
                          "--output", str(out)]) == 0
    assert "--scale 1 differs from the scale" in capsys.readouterr().err
    shutil.copy(finished_run / "last.keras", tmp_path / "alone.keras")
    assert evaluate.main([str(tmp_path / "alone.keras"), "--limit", "8", "--output", str(out)]) == 0
    assert "has no config.json beside it" in capsys.readouterr().err


# -- 5. numbers are checked ----------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
    (["--batch-size", "-2"], "--batch-size -2: expected an integer >= 1"),
    (["--epochs", "0"], "--epochs 0: expected an integer >= 1"),
    (["--epochs", "-1"], "--epochs -1: expected an integer >= 1"),
    (["--learning-rate", "-1"], "--learning-rate -1.0: expected a finite number > 0"),
    (["--learning-rate", "nan"], "--learning-rate nan: expected a finite number > 0"),
    (["--limit", "0"], "--limit 0: expected an integer >= 1"),
    (["--scale", "0"], "--scale 0: expected an integer >= 1"),
    (["--workers", "0"], "--workers 0: expected an integer >= 1"),
    (["--seed", "-1"], "--seed -1: expected an integer in 0..4294967295"),
    (["--dropout", "1.5"], "--dropout 1.5: expected a rate in [0, 1)"),
    (["--width", "5"], "--width 5: expected an integer >= 7"),
    (["--l2", "inf"], "--l2 inf: expected a finite factor >= 0"),
])
def test_numeric_flags_are_checked_and_leave_no_folder(tmp_path, flags, message, capsys):
    assert fit.main([*SMALL, "--output", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n" or (err.startswith("error: ") and message in err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--batch-size", "--limit", "--scale"])
def test_evaluate_numeric_flags_are_checked(flag, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["model.keras", "--output", "out", flag, "0"])
    assert f"{flag}: '0': expected a number > 0" in capsys.readouterr().err


# -- 6. damaged run files ------------------------------------------------------------


def test_a_truncated_checkpoint_is_named(run_copy, capsys):
    _truncate(run_copy / "checkpoint.npz")
    before = snapshot(run_copy)
    assert fit.main(["--output", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_copy / 'checkpoint.npz'} is damaged (BadZipFile" in err and "Traceback" not in err
    assert snapshot(run_copy) == before


def test_a_checkpoint_of_another_model_is_named(run_copy, tmp_path):
    config = json.loads((run_copy / "config.json").read_text())
    config["fit"]["width"] = 12  # as if the folder's checkpoint came from a wider model
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainingError, match=r"checkpoint.npz: model/0000 has shape .* the checkpoint is not of"):
        fit.run(*parse_config(["--output", str(run_copy), "--resume"]))


def test_a_corrupt_config_is_named(run_copy, capsys):
    (run_copy / "config.json").write_text('{"fit": {')
    assert fit.main(["--output", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_copy / 'config.json'} is damaged (JSONDecodeError" in err


def test_a_truncated_model_file_is_named(run_copy, tmp_path, capsys):
    model = run_copy / "last.keras"
    _truncate(model)
    assert evaluate.main([str(model), "--output", str(tmp_path / "eval")]) == 2
    assert f"error: {model} is damaged or not a .keras file" in capsys.readouterr().err
    convert = load_script("export", "convert")
    assert convert.main([str(model), "--output", str(tmp_path / "x.tflite")]) == 2
    assert f"error: {model} is damaged or not a .keras file" in capsys.readouterr().err


# -- 7. the NaN message --------------------------------------------------------------

NAN_IN_EPOCH_1 = """
import keras, numpy as np, sys
from itnet_keras import fit
from itnet_keras.config import parse_config

class Poison(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        kernel = self.model.get_layer("data_block").convs[0].kernel
        kernel.assign(np.full(kernel.shape, np.nan, "float32"))

try:
    fit.run(*parse_config(["--limit", "8", "--epochs", "2", "--output", sys.argv[1]]), callbacks=[Poison()])
except fit.TrainingError as error:
    print(error)
"""


def test_nan_in_epoch_1_says_no_checkpoint_exists_and_prints_no_stray_lines(tmp_path):
    result = subprocess.run([sys.executable, "-c", NAN_IN_EPOCH_1, str(tmp_path / "run")], capture_output=True,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=300)
    assert "NaN in epoch 1, before any epoch completed, so" in result.stdout, result.stderr[-2000:]
    assert "holds no checkpoint" in result.stdout
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    assert "PyFunc" not in result.stderr and "GeneratorDataset" not in result.stderr, result.stderr[-2000:]


def test_a_damaged_log_is_named(run_copy, capsys):
    with open(run_copy / "log.csv", "a") as log:
        log.write("x,1\n")
    assert fit.main(["--output", str(run_copy), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_copy / 'log.csv'} is damaged" in err and "Traceback" not in err


def test_a_log_row_cut_short_by_a_crash_is_dropped_on_resume(run_copy):
    with open(run_copy / "log.csv", "ab") as log:
        log.write(b"0,0.5")  # the start of a row, cut by a crash
    fit.run(*parse_config(["--output", str(run_copy), "--resume", "--epochs", "2"]))
    rows = (run_copy / "log.csv").read_bytes().splitlines(keepends=True)
    assert [row.split(b",")[0] for row in rows[1:]] == [b"0", b"1"] and all(row.endswith(b"\r\n") for row in rows)


def test_a_kill_just_after_the_checkpoint_loses_no_log_row(tmp_path, monkeypatch):
    """log.csv and TensorBoard are written before checkpoint.npz, the commit point: a run killed
    right after it committed epoch 1 resumes with epoch 1's row, and every epoch has one row
    and one TensorBoard point (was: TensorBoard, written after the commit, lost epoch 1)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    commit = run_folder.save_checkpoint

    def commit_then_kill(*args):
        commit(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_checkpoint", commit_then_kill)
    with pytest.raises(KeyboardInterrupt):
        fit.run(*parse_config([*SMALL, "--epochs", "2", "--output", str(tmp_path / "run")]))
    monkeypatch.undo()
    fit.run(*parse_config(["--output", str(tmp_path / "run"), "--resume"]))
    rows = (tmp_path / "run" / "log.csv").read_bytes().splitlines(keepends=True)
    assert [row.split(b",")[0] for row in rows[1:]] == [b"0", b"1"]
    assert all(row.endswith(b"\r\n") for row in rows)  # as Keras wrote them (was: the resume's trim made LF of some)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "train")).Reload()
    assert [e.step for e in events.Scalars("epoch_loss")] == [0, 1]



def test_a_kill_before_the_checkpoint_leaves_the_model_files_of_the_committed_epoch(tmp_path, monkeypatch):
    """last.keras and best.keras wait under pending names until checkpoint.npz commits their
    epoch. Killed in between (here epoch 2, which scores best), the folder's files are still
    epoch 1's, and a resume with no epoch left reports best.keras as epoch 1's, which it is
    (was: epoch 2's weights reported as epoch 1's)."""
    run = tmp_path / "run"
    end, commit = run_folder.RunCheckpoint.on_epoch_end, run_folder.save_checkpoint

    def every_epoch_the_best(self, epoch, logs=None):
        end(self, epoch, {**(logs or {}), self.monitor: float(epoch)})

    def kill_before_epoch_2(path, model, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        commit(path, model, state)

    monkeypatch.setattr(run_folder.RunCheckpoint, "on_epoch_end", every_epoch_the_best)
    monkeypatch.setattr(run_folder, "save_checkpoint", kill_before_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit.run(*parse_config([*SMALL, "--epochs", "2", "--output", str(run)]))
    monkeypatch.undo()
    assert sorted(p.name for p in run.glob(".*")) == [".best-epoch2.pending.keras", ".last-epoch2.pending.keras"]
    weights = {name: [np.array(v) for v in evaluate.load_itnet(run / name).weights]
               for name in ("last.keras", "best.keras", ".best-epoch2.pending.keras")}
    for a, b in zip(weights["best.keras"], weights["last.keras"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(weights["best.keras"], weights[".best-epoch2.pending.keras"]))
    (run / ".best.keras.999-0a1b2c3d.tmp.keras").write_bytes(b"half a model")  # what a SIGKILL can leave
    report = fit.run(*parse_config(["--output", str(run), "--resume", "--epochs", "1"]))
    assert (report["model"]["file"], report["model"]["epoch"]) == ("best.keras", 1)
    assert not list(run.glob(".*"))  # pending and temporary files removed


def test_a_stop_during_the_commit_waits_for_the_model_files_to_be_promoted(tmp_path, monkeypatch):
    """Ctrl-C arriving while checkpoint.npz is written takes effect once the files it commits are
    renamed into place: the stopped run's folder has last.keras and best.keras of that epoch and
    no pending file (was: a stop right after the checkpoint left them pending until a resume)."""
    run, commit = tmp_path / "run", run_folder.save_checkpoint

    def commit_with_a_ctrl_c(*args):
        signal.raise_signal(signal.SIGINT)
        commit(*args)

    monkeypatch.setattr(run_folder, "save_checkpoint", commit_with_a_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a pytest worker may ignore it
    try:
        with pytest.raises(KeyboardInterrupt):
            fit.run(*parse_config([*SMALL, "--epochs", "2", "--output", str(run)]))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert run_folder.committed_epoch(run) == 1
    assert sorted(p.name for p in run.glob("*.keras")) == ["best.keras", "last.keras"]
    assert not list(run.glob(".*"))


def test_a_kill_before_the_recalibration_is_recorded_leaves_best_keras_as_trained(tmp_path, monkeypatch):
    """The recalibrated best.keras waits under a pending name until the checkpoint records it.
    Killed in between, best.keras is as training left it; the resume recalibrates it again and
    reports it as recalibrated (was: the file replaced before the record, and a resume reported
    its batch norms as the training's)."""
    from itnet_keras.batch_norm import moving_statistics

    run = tmp_path / "run"
    evaluate_model, calls = fit_report.evaluate_model, []

    def recalibration_wins(model, *args, **kwargs):  # every second evaluation is the recalibrated one's
        result = evaluate_model(model, *args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 0:
            result["outputs"][-1]["miou"] += 1.0
        return result

    def kill_at_the_record(path, state):
        raise KeyboardInterrupt

    commit = fit_report.record_state
    monkeypatch.setattr(fit_report, "evaluate_model", recalibration_wins)
    monkeypatch.setattr(fit_report, "record_state", kill_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        fit.run(*parse_config([*SMALL, "--epochs", "2", "--bn-batches", "4", "--output", str(run)]))
    stats = {path.name: [np.array(v) for v in moving_statistics(evaluate.load_itnet(path))]
             for path in [run / "best.keras", *run.glob(".*.pending.keras")]}
    with np.load(run / "checkpoint.npz") as checkpoint:
        state = json.loads(str(checkpoint["state"]))
    pending = f".best-epoch{state['best_epoch']}-recalibrated.pending.keras"
    assert sorted(stats) == [pending, "best.keras"] and "recalibrated" not in state
    assert any(not np.array_equal(a, b) for a, b in zip(stats["best.keras"], stats[pending]))
    monkeypatch.setattr(fit_report, "record_state", commit)
    report = fit.run(*parse_config(["--output", str(run), "--resume"]))
    assert report["model"]["bn_recalibrated"]
    for a, b in zip(stats[pending], moving_statistics(evaluate.load_itnet(run / "best.keras"))):
        np.testing.assert_allclose(np.array(b), a, rtol=1e-5, atol=1e-6)  # the same recalibration again
    assert not list(run.glob(".*"))
    again = fit.run(*parse_config(["--output", str(run), "--resume"]))  # recorded: reported so, not redone
    assert again["model"]["bn_recalibrated"] and again["model"]["last_output_miou"] == report["model"]["last_output_miou"]


def test_extending_a_recalibrated_run_keeps_best_keras_unless_an_epoch_beats_it(tmp_path, monkeypatch, capsys):
    """A finished run's best.keras, recalibrated in place, scores its recalibrated mIoU: a run
    extended by --resume --epochs replaces it only with an epoch that scores higher (was: with
    any epoch above the training's moving-average score, so a worse file could replace it)."""
    from itnet_keras.batch_norm import moving_statistics

    run = tmp_path / "run"
    evaluate_model, calls = fit_report.evaluate_model, []

    def recalibration_wins(model, *args, **kwargs):  # the recalibrated file scores 1 higher: unbeatable
        result = evaluate_model(model, *args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 0:
            result["outputs"][-1]["miou"] += 1.0
        return result

    monkeypatch.setattr(fit_report, "evaluate_model", recalibration_wins)
    fit.run(*parse_config([*SMALL, "--bn-batches", "2", "--output", str(run)]))
    kept = [np.array(v) for v in moving_statistics(evaluate.load_itnet(run / "best.keras"))]
    monkeypatch.undo()
    report = fit.run(*parse_config(["--output", str(run), "--resume", "--epochs", "3"]))
    assert (report["model"]["file"], report["model"]["epoch"]) == ("best.keras", 1)
    for a, b in zip(kept, moving_statistics(evaluate.load_itnet(run / "best.keras"))):
        np.testing.assert_array_equal(np.array(b), a)
    assert max(float(row["val_output_4_miou"]) for row in csv.DictReader(open(run / "log.csv"))) > \
        float(next(csv.DictReader(open(run / "log.csv")))["val_output_4_miou"])  # a later epoch beat epoch 1's averages
    capsys.readouterr()
    fit.run(*parse_config(["--output", str(run), "--resume", "--bn-batches", "3"]))  # said, not silently ignored
    assert (f"note: {run / 'best.keras'} (epoch 1) was recalibrated over 2 batches by an earlier report of this run, "
            "in place; --bn-batches 3 does not redo it") in capsys.readouterr().err


def test_a_callback_that_stops_between_checkpoints_leaves_the_checkpoints_weights(tmp_path, monkeypatch):
    """A caller's callback stops a `--checkpoint-every 2` run after epoch 3: the report's record of
    the recalibration rewrites the checkpoint's state only, its weights stay epoch 2's (was:
    epoch 3's weights, in memory, saved under epoch 2)."""
    run, committed = tmp_path / "run", {}
    evaluate_model = fit_report.evaluate_model

    def recalibration_wins(model, *args, **kwargs):  # as in the test above: a record is written
        result = evaluate_model(model, *args, **kwargs)
        committed["evaluations"] = committed.get("evaluations", 0) + 1
        result["outputs"][-1]["miou"] += 1 - committed["evaluations"] % 2  # the second, recalibrated one
        return result

    class StopAfterEpoch3(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                with np.load(run / "checkpoint.npz") as data:
                    committed.update(arrays={k: data[k] for k in data.files if k != "state"})
            if epoch + 1 == 3:
                self.model.stop_training = True

    monkeypatch.setattr(fit_report, "evaluate_model", recalibration_wins)
    fit.run(*parse_config([*SMALL, "--epochs", "5", "--checkpoint-every", "2", "--bn-batches", "2",
                           "--output", str(run)]), callbacks=[StopAfterEpoch3()])
    with np.load(run / "checkpoint.npz") as data:
        state = json.loads(str(data["state"]))
        assert state["epoch"] == 2 and state["recalibrated"]["epoch"] == 2
        for key, array in committed["arrays"].items():
            np.testing.assert_array_equal(data[key], array, err_msg=key)


def test_a_stop_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    """Stopped in epoch 1, `fit` says the folder holds nothing to resume (was: that --resume
    would go on from its last completed epoch, which then failed: nothing to resume)."""
    def stop(self, epoch, logs=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunCheckpoint, "on_epoch_end", stop)
    assert fit.main([*SMALL, "--output", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"stopped by Ctrl-C before the first checkpoint: {tmp_path / 'run'} holds nothing to resume; "
        "the same command starts the run again")
    monkeypatch.undo()
    assert fit.main([*SMALL, "--output", str(tmp_path / "run")]) == 0

# -- 8. --resume --epochs M ----------------------------------------------------------


def test_resume_with_more_epochs_follows_the_new_totals_schedule(tmp_path):
    """Extended to 3 epochs after 1 of 2 (before the 2-epoch schedule's first step, at 70%),
    a run ends with the weights of a 3-epoch run: the step boundaries follow the new total
    (kept boundaries would have lowered the rate at 70% of 2 epochs)."""
    small = ["--limit", "8", "--batch-size", "4", "--scale", "2", "--learning-rate", "3e-3", "--bn-batches", "0"]
    fit.run(*parse_config([*small, "--epochs", "3", "--output", str(tmp_path / "straight")]))
    with pytest.raises(KeyboardInterrupt):
        fit.run(*parse_config([*small, "--epochs", "2", "--output", str(tmp_path / "extended")]),
                callbacks=[Interrupt(after=1)])
    fit.run(*parse_config(["--output", str(tmp_path / "extended"), "--resume", "--epochs", "3"]))
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "extended" / "checkpoint.npz") as b:
        assert json.loads(str(b["state"]))["epoch"] == 3
        for key in a.files:
            if key != "state":
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    saved = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert saved["fit"]["epochs"] == 3


def test_a_finished_run_is_extended_and_never_shortened(run_copy):
    fit.run(*parse_config(["--output", str(run_copy), "--resume", "--epochs", "2"]))
    with np.load(run_copy / "checkpoint.npz") as data:
        assert json.loads(str(data["state"]))["epoch"] == 2
    assert (run_copy / "log.csv").read_text().count("\n") == 3  # header and epochs 1, 2
    assert json.loads((run_copy / "config.json").read_text())["fit"]["epochs"] == 2
    with pytest.raises(ConfigError, match=r"--epochs 1: the run in .* has already completed 2 epochs"):
        fit.run(*parse_config(["--output", str(run_copy), "--resume", "--epochs", "1"]))
    with pytest.raises(ConfigError, match=r"--epochs 1: the run in .* has already completed 2 epochs"):
        run_folder.prepare_folder(*parse_config(["--output", str(run_copy), "--resume", "--epochs", "1"]))  # before any data
