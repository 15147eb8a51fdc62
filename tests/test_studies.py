"""The ablation helpers the notebooks call: the width rule, the selection rule, run reuse."""

import dataclasses
import gc
import json
import os

import pytest

from itnet_keras.lab import modes, search, studies
from itnet_keras.presets import resolve_model_args
from itnet_keras.run_folder import RESUME_MAY_CHANGE, kept_config

SMALL = dict(num_iterations=4, num_scales=2, expansion=2)


def test_largest_width_is_the_paper_calibration():
    # SPEC s.6: f=29 is the largest width under 2.2e9 MACs at 480x360 (N=16, L=3, K=1).
    assert search.largest_width(2.2e9, (360, 480), weight_sharing=False) == 29


def test_largest_width_stops_just_under_the_budget():
    macs_10 = search.macs_of((32, 32), width=10, **SMALL)
    assert search.largest_width(macs_10 + 1, (32, 32), **SMALL) == 10
    assert search.largest_width(macs_10, (32, 32), **SMALL) == 9  # "less than" the budget
    with pytest.raises(ValueError, match="f=7"):
        search.largest_width(10, (32, 32), **SMALL)


def row(architecture, variant, auc, peak):
    return {"architecture": architecture, "variant": variant, "normalized_auc": auc, "miou_peak": peak}


def test_selection_rule_discards_low_peaks_then_averages_ranks():
    rows = [
        row("A", "shared", 0.50, 0.70), row("A", "independent", 0.40, 0.70),
        row("B", "shared", 0.45, 0.71), row("B", "independent", 0.45, 0.71),
        # best AUC' in both variants, but its peak is 0.03 below the best: discarded
        row("C", "shared", 0.60, 0.68), row("C", "independent", 0.60, 0.68),
    ]
    winner, ranks = search.select_architecture(rows)
    assert ranks["C"] == {"shared": None, "independent": None}
    assert ranks["A"] == {"shared": 1, "independent": 2} and ranks["B"] == {"shared": 2, "independent": 1}
    assert winner == "A"  # a tie in average rank goes to the first architecture listed
    rows[1]["normalized_auc"] = 0.30
    rows[3]["normalized_auc"] = 0.46
    rows[0]["normalized_auc"] = 0.44  # now B ranks first in both variants
    assert search.select_architecture(rows)[0] == "B"


def test_selection_rule_needs_a_survivor_in_every_variant():
    rows = [row("A", "shared", 0.5, 0.70), row("A", "independent", 0.5, 0.60),
            row("B", "shared", 0.5, 0.60), row("B", "independent", 0.5, 0.70)]
    assert search.select_architecture(rows) == (None, {"A": {"shared": 1, "independent": None},
                                                       "B": {"shared": None, "independent": 1}})


def test_mode_from_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("ITNET_NOTEBOOK_MODE", "huge")
    with pytest.raises(ValueError, match="ITNET_NOTEBOOK_MODE='huge'"):
        modes.mode_from_env()
    monkeypatch.setenv("ITNET_NOTEBOOK_MODE", "full")
    assert modes.mode_from_env() == "full"


def write_run(study, config, evaluation=None):
    """A run folder as `fit.run` leaves it (config.json, and evaluation.json when finished)."""
    folder = study.runs / config.output.rsplit("/", 1)[-1]
    folder.mkdir(parents=True)
    model = resolve_model_args(config.preset, **config.model_overrides())
    (folder / "config.json").write_text(json.dumps({"fit": dataclasses.asdict(config), "model": model}))
    if evaluation is not None:
        (folder / "evaluation.json").write_text(json.dumps(evaluation))
    return folder


def test_a_finished_run_is_reused_and_a_different_one_refused(tmp_path):
    study = studies.Study("t", "smoke", repo=tmp_path)
    config = study.config("independent", "single:4")
    assert config.output.endswith("independent_f8_single4")
    assert study.config("independent", bn_placement="between").output.endswith("independent_f8_all")
    assert study.config("independent", bn_placement="every_conv", epochs=3).output.endswith(
        "independent_f8_all_bn_placementevery_conv_e3")
    evaluation = {"outputs": [{"miou": 0.5}], "normalized_auc": 0.4}
    folder = write_run(study, config, evaluation)
    result = study.train("independent", "single:4")  # reused: no training happens
    assert result["outputs"] == evaluation["outputs"] and result["config"]["output_weights"] == "single:4"
    # a run from before fit recorded its time: from its config.json to its evaluation.json
    os.utime(folder / "config.json", (1000, 1000))
    os.utime(folder / "evaluation.json", (1090, 1090))
    assert study.train("independent", "single:4")["elapsed_s"] == 90
    # fit's record, which counts every start of a resumed run: its epochs and its evaluation
    evaluation["model"] = {"train_seconds": 300.0, "evaluate_seconds": 12.5}
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    assert study.train("independent", "single:4")["elapsed_s"] == 312.5
    with pytest.MonkeyPatch.context() as patch:  # the data elsewhere (lab.notebooks --data-dir): the same run
        patch.setenv("ITNET_DATA_DIR", str(tmp_path / "camvid"))
        assert study.config("independent", "single:4").data_dir == str(tmp_path / "camvid")
        assert study.train("independent", "single:4")["outputs"] == evaluation["outputs"]
    other = dataclasses.replace(study.config("independent"), epochs=7)
    folder = write_run(study, other)
    with pytest.raises(ValueError, match=f"{folder}.*differs in \\['epochs'\\]"):
        study.train("independent")


def test_a_cut_off_run_resumes_with_the_data_where_it_lies_now(tmp_path, monkeypatch):
    study = studies.Study("t", "smoke", repo=tmp_path)
    folder = write_run(study, study.config("independent"))  # trained elsewhere, cut off: no evaluation.json
    (folder / "checkpoint.npz").write_bytes(b"")
    calls = []
    monkeypatch.setattr(studies, "run", lambda config, given=(): calls.append((config, set(given))) or
                        {"model": {"train_seconds": 1.0, "evaluate_seconds": 1.0}})
    monkeypatch.setenv("ITNET_DATA_DIR", str(tmp_path / "camvid"))
    study.train("independent")
    (config, given), = calls
    # what fit.run does with them: the saved configuration, but for the data folder of this machine
    resumed = kept_config(config, given, folder, RESUME_MAY_CHANGE, "a resumed run")
    assert config.resume and resumed.data_dir == str(tmp_path / "camvid")


def test_a_smoke_study_removes_its_temporary_folder(tmp_path, monkeypatch):
    """Smoke results (and runs, without $ITNET_SMOKE_RUNS) go to a temporary folder that
    goes with the study (was: one more folder in /tmp for every smoke notebook run)."""
    monkeypatch.delenv("ITNET_SMOKE_RUNS", raising=False)
    study = studies.Study("t", "smoke", repo=tmp_path)
    scratch = study.results.parent
    assert study.runs.parent == scratch and scratch.is_dir()
    (study.results / "figure.png").write_bytes(b"png")
    del study
    gc.collect()
    assert not scratch.exists()


def test_save_records_mode_budget_and_command(tmp_path):
    study = studies.Study("01_x", "smoke", repo=tmp_path)
    path = study.save({"value": 1.5})
    data = json.loads(path.read_text())
    assert data["mode"] == "smoke" and data["value"] == 1.5 and data["wall_s"] >= 0
    assert data["command"] == "python -m itnet_keras.lab.notebooks notebooks/01_x.py --mode smoke"
    assert str(path).startswith(str(study.results)) and not str(path).startswith(str(tmp_path))
    # runs of other epochs than the mode's say so in the budget (was: the mode's 15 beside 5)
    full = studies.Study("02_x", "full", repo=tmp_path)
    assert "5 epochs, batch 8" in json.loads(full.save({}, epochs=5).read_text())["budget"]
    assert "1 epoch," in json.loads(study.save({}, epochs=1).read_text())["budget"]
