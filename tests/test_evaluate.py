"""The mIoU-over-MACs plot's published reference points (plots.reference_marks)."""

from itnet_keras.plots import plot_miou_over_macs, reference_marks


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
