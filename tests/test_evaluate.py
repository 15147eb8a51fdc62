"""`evaluate_model`'s numbers against a count of their own; the mIoU-over-MACs plot's
published reference points (plots.reference_marks)."""

import json

import keras
import numpy as np
from pytest import approx

from itnet_keras import build_itnet, evaluate, recalibrate
from itnet_keras.costs import output_costs
from itnet_keras.evaluate import evaluate_model
from itnet_keras.pipeline import make_dataset
from itnet_keras.plots import plot_miou_over_macs, reference_marks


def test_evaluate_model_counts_every_pixel_of_the_split():
    """mIoU and IoU per class of each output, counted here with numpy over every labelled
    pixel of the split (a split of 10 in batches of 4: the last batch is short), MACs from
    the cost model, AUC from the paper's trapezoid over MACs from the split's chance level."""
    keras.utils.set_random_seed(0)
    model = build_itnet("tiny")
    dataset = make_dataset("builtin", "val", batch_size=4, limit=10)
    result = evaluate_model(model, dataset, loss_weights=[0, 0, 0, 1])
    images = np.concatenate([dataset[i][0] for i in range(len(dataset))])
    labels = np.concatenate([dataset[i][1] for i in range(len(dataset))])
    assert result["images"] == len(images) == 10
    classes = dataset.spec.num_classes
    valid = labels != dataset.spec.ignore_label
    for n, (logits, output) in enumerate(zip(model.predict(images, verbose=0), result["outputs"])):
        predicted = logits.argmax(-1)
        iou = []
        for c, name in enumerate(dataset.spec.class_names):
            hits = np.sum((predicted == c) & (labels == c) & valid)
            union = np.sum(((predicted == c) | (labels == c)) & valid)
            got = output["iou_per_class"][name]
            assert got is None if union == 0 else abs(got - hits / union) < 1e-6, (n, name)
            iou += [hits / union] if union else []
        assert abs(output["miou"] - np.mean(iou)) < 1e-6, n
        # the split's confusion matrix, rows the labels: what tools/class_rates.py reads
        counted = np.bincount(labels[valid] * classes + predicted[valid], minlength=classes**2)
        assert output["confusion_matrix"] == counted.reshape(classes, classes).tolist(), n
        assert output["loss_weight"] == (1.0 if n == 3 else 0.0)
    assert [o["macs"] for o in result["outputs"]] == [c["macs"] for c in output_costs(model, (64, 64))]
    # (0, chance level) starts the curve (SPEC s.5); for the built-in data, which has no published
    # one, the majority class's share of the labelled pixels over the classes present
    counts = np.bincount(labels[valid], minlength=classes)
    chance = counts.max() / counts.sum() / np.count_nonzero(counts)
    assert result["chance_miou"] == approx(chance) and 0 < chance < 0.5
    macs = [0] + [o["macs"] for o in result["outputs"]]
    auc = np.trapezoid([0.0] + [o["miou"] - chance for o in result["outputs"]], macs)
    assert abs(result["auc"] / auc - 1) < 1e-9 and abs(result["normalized_auc"] - auc / macs[-1]) < 1e-9
    assert len(set(o["miou"] for o in result["outputs"])) > 1  # the outputs differ: the check can fail


def _result(dataset, input_size, mious=(0.3, 0.5)):
    outputs = [{"output": n, "miou": m, "macs": int(n * 3.1e9)} for n, m in enumerate(mious, start=1)]
    return {"dataset": dataset, "split": "val", "input_size": list(input_size), "normalized_auc": 0.4,
            "outputs": outputs}


def test_camvid_references_sit_on_the_macs_axis_only_at_480x360_and_where_published():
    marks = {label: rest for label, *rest in reference_marks(_result("camvid", (360, 480)))}
    assert marks["ItNet paper, shared f=51 (val)"] == [6.2, 0.728, None]
    # no published MACs at 480x360: a level, not a point
    assert marks["ENet (test)"] == [None, 0.513, "no published MACs at 480x360"]
    assert marks["ESPNet (test)"][:2] == [None, 0.556] and marks["CGNet (test)"][:2] == [None, 0.656]
    # at another input size the MACs axis is another one: every reference becomes a level
    small = reference_marks(_result("camvid", (90, 120)))
    assert all(macs is None for _, macs, _, _ in small)
    assert small[0] == ("ItNet paper, shared f=51 (val)", None, 0.728, "6.2e9 MACs at 480x360")
    assert reference_marks(_result("builtin", (64, 64))) == []


def test_plot_draws_the_references_beside_the_curve(tmp_path):
    labels = plot_miou_over_macs({"run": _result("camvid", (360, 480))}, tmp_path / "full.png")
    assert labels == ["run (AUC' 0.400)", "ItNet paper, shared f=51 (val)"]
    assert (tmp_path / "full.png").stat().st_size > 1000
    labels = plot_miou_over_macs({"run": _result("camvid", (90, 120))}, tmp_path / "small.png")
    assert labels == ["run (AUC' 0.400)"]  # levels carry their names on the plot, not in the legend
    assert plot_miou_over_macs({"run": _result("builtin", (64, 64))}, tmp_path / "b.png") == ["run (AUC' 0.400)"]


def test_a_size_the_data_does_not_fit_is_named_where_it_came_from(tmp_path, capsys):
    """`evaluate` and `recalibrate` blame the flag when it was given, else the config.json
    beside the model that recorded the value (was: the value alone, from either)."""
    run = tmp_path / "run"
    run.mkdir()
    build_itnet("tiny").save(run / "best.keras")
    config = run / "config.json"
    config.write_text(json.dumps({"fit": {"data": "builtin", "scale": 3, "crop": "80x80", "batch_size": 4}}))
    model = str(run / "best.keras")
    assert evaluate.main([model, "--output", str(tmp_path / "e")]) == 2
    assert f"error: {config} records scale 3 for builtin: expected a positive integer" in capsys.readouterr().err
    assert evaluate.main([model, "--scale", "5", "--output", str(tmp_path / "e")]) == 2
    assert "error: --scale 5 for builtin:" in capsys.readouterr().err
    out = str(tmp_path / "r.keras")
    assert recalibrate.main([model, "--output", out]) == 2
    assert f"error: {config} records scale 3 for builtin" in capsys.readouterr().err
    assert recalibrate.main([model, "--scale", "2", "--output", out]) == 2  # the recorded crop, 80x80 > 32x32
    assert f"error: {config} records crop 80x80 for builtin: expected at most the image size 32x32" \
        in capsys.readouterr().err
    assert recalibrate.main([model, "--scale", "2", "--crop", "40x40", "--output", out]) == 2
    assert "error: --crop 40x40 for builtin" in capsys.readouterr().err
    assert recalibrate.main([model, "--scale", "2", "--crop", "32x32", "--limit", "2", "--output", out]) == 2
    assert f"error: {config} records batch_size 4: builtin train has 2 samples: expected at least batch_size 4" \
        in capsys.readouterr().err
    assert recalibrate.main([model, "--scale", "2", "--crop", "32x32", "--batch-size", "3", "--limit", "2",
                             "--output", out]) == 2
    assert "error: --batch-size 3: builtin train has 2 samples" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "r.keras").exists()
