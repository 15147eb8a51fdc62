"""tools/trace_summary.py on a trace made here: what it sums is what the events say."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(folder, name):
    """FOLDER/NAME.py of the repository (tools/, export/: scripts, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trace_summary():
    return load_script("tools", "trace_summary")


def write_trace(folder, events):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    path = folder / "plugins" / "profile" / "run" / "vm.trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + events}, f)


def op(start, duration, pid=1, name="fusion"):
    return {"ph": "X", "pid": pid, "tid": 1, "ts": start, "dur": duration, "name": name}


def test_busy_time_ops_and_gaps_per_step(tmp_path, trace_summary, capsys):
    # Two steps, each launched by the host (ExecuteThunks at 0 and 100000 us). Step 1's GPU ops:
    # three overlapping on other streams (0-10000, 1000-2000, 5000-12000), then idle gaps of 3, 60
    # and 2000 us; step 2's: two overlapping. The 60 ms between the steps is no GPU gap. The
    # host's PjitFunction event appears twice, one inside the other, as in JAX's traces.
    thunks = "GpuExecutable::ExecuteThunks"
    write_trace(tmp_path, [op(0, 10000), op(1000, 1000), op(5000, 7000), op(12003, 8000), op(20063, 10000),
                           op(32063, 8000), op(100000, 40000), op(100000, 1000),
                           op(0, 30000, pid=2, name=thunks), op(100000, 30000, pid=2, name=thunks),
                           op(0, 50000, pid=2, name="PjitFunction"), op(1, 49998, pid=2, name="PjitFunction")])
    trace_summary.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("2 steps")
    assert "| GPU span (a step's first op to its last) | 40.0 ms |" in out   # (40063 + 40000) / 2
    assert "| GPU busy (some stream working) | 39.0 ms (97%) |" in out   # (12 + 8 + 10 + 8 + 40 ms) / 2
    assert "| GPU ops (kernels, memsets, copies) | 4 |" in out
    assert "| idle gaps of 0-5 us | 0.5, 0.0 ms |" in out
    assert "| idle gaps of 5-20 us | 0, 0.0 ms |" in out
    assert "| idle gaps of 20-100 us | 0.5, 0.0 ms |" in out
    assert "| idle gaps of over 1000 us | 0.5, 1.0 ms |" in out   # 2000 us in step 1; none between the steps
    assert "| `GpuExecutable::ExecuteThunks` | 30.0 | 1 |" in out
    assert "| `PjitFunction` | 25.0 | 0.5 |" in out   # counted once


def test_without_launch_events_the_trace_is_divided_into_the_steps_given(tmp_path, trace_summary, capsys):
    write_trace(tmp_path, [op(0, 10000), op(10000, 10000)])
    trace_summary.main([str(tmp_path), "--steps", "2"])
    out = capsys.readouterr().out
    assert out.startswith("2 steps") and "| GPU busy (some stream working) | 10.0 ms (100%) |" in out


def test_intervals_merge_across_streams(trace_summary):
    events = [op(0, 10), op(5, 7), op(15, 5)]
    assert trace_summary.busy_intervals(events) == [[0, 12], [15, 20]]


def test_a_trace_without_gpu_events_is_refused(tmp_path, trace_summary):
    write_trace(tmp_path, [op(0, 10, pid=2)])
    with pytest.raises(SystemExit, match="no GPU events"):
        trace_summary.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no .*trace.json.gz under"):
        trace_summary.main([str(tmp_path / "nothing")])


def test_a_bench_cut_off_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """`lab.bench --output` is rewritten after every measurement: when the unrolled variant's
    process dies (a device call's time limit, a compile that runs out of memory), the loop's
    row is in the file (was: no file; the device session then had no rate to choose by)."""
    from itnet_keras.lab import bench

    def measured(preset, batch_size, unroll, *args):
        if unroll:
            raise KeyboardInterrupt  # as the time limit's signal ends the bench
        return {"images_per_s": 85.9, "step_s": 0.093, "peak_mb": 3593.0, "memory": "GPU peak", "compile_s": 26.0}

    monkeypatch.setattr(bench, "measure_in_subprocess", measured)
    out = tmp_path / "bench.md"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--presets", "camvid_shared", "--batch-sizes", "8", "--output", str(out)])
    row = out.read_text().splitlines()[-1]
    assert row.startswith("| camvid_shared | 8 | 85.90 | - |")
    assert row.split("|")[3].strip() == "85.90"  # the column tools/device_session.sh reads ($4 of awk -F'|')


def test_the_bench_trains_under_a_mixed_precision_policy():
    """`lab.bench --precision mixed_bfloat16` times a real training step in its own process
    with the model computing in bfloat16: the measurement tools/device_check.sh makes on a GPU."""
    from itnet_keras.lab import bench

    measured = bench.measure_in_subprocess("tiny", 2, False, (32, 32), 1, precision="mixed_bfloat16")
    assert measured["compute_dtype"] == "bfloat16"
    assert measured["images_per_s"] > 0


def test_log_windows_gives_the_median_and_best_of_each_window(tmp_path, capsys):
    module = load_script("tools", "log_windows")
    columns = module.COLUMNS
    lines = ["epoch," + ",".join(columns)]
    for epoch, value in enumerate([0.1, 0.5, 0.3, 0.9]):  # epochs 1 to 4 (the column counts from 0)
        lines.append(f"{epoch}," + ",".join(str(value) for _ in columns))
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    module.main([str(tmp_path / "log.csv"), "1-3", "4-4"])
    first, second = capsys.readouterr().out.splitlines()
    assert first == "| 1 to 3 | " + " | ".join(["0.300 / 0.500"] * 4 + ["0.300 / 0.100"]) + " |"  # loss: the lowest
    assert second == "| 4 to 4 | " + " | ".join(["0.900 / 0.900"] * 5) + " |"
    with pytest.raises(SystemExit, match="no epoch of 5-6"):
        module.main([str(tmp_path / "log.csv"), "5-6"])


def test_log_windows_per_output_gives_each_outputs_medians(tmp_path, capsys):
    module = load_script("tools", "log_windows")
    columns = [f"{split}output_{k}_{what}" for split in ("", "val_") for k in (1, 2) for what in ("miou", "loss")]
    lines = ["epoch," + ",".join(columns)]
    for epoch, value in enumerate([0.2, 0.6, 0.4]):  # train above val by 0.1 at output 1, 0.2 at output 2
        cells = {f"{split}output_{k}_{what}": value + (0.1 * k if split == "" else 0) + (1 if what == "loss" else 0)
                 for split in ("", "val_") for k in (1, 2) for what in ("miou", "loss")}
        lines.append(f"{epoch}," + ",".join(f"{cells[c]:.2f}" for c in columns))
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    module.main([str(tmp_path / "log.csv"), "1-3", "--per-output"])
    title, _, header, _, first, second, end = capsys.readouterr().out.splitlines()
    assert end == ""  # a second window's title would otherwise join this table
    assert title == "epochs 1 to 3:" and header.startswith("| output | train mIoU |")
    assert first == "| 1 | 0.500 | 0.400 | 0.100 | 1.500 | 1.400 |"
    assert second == "| 2 | 0.600 | 0.400 | 0.200 | 1.600 | 1.400 |"


def test_class_rates_tabulates_each_outputs_confusion_matrix(tmp_path, capsys):
    module = load_script("tools", "class_rates")
    # 10 labelled pixels: output 1 draws class "b" too large (precision 0.5), output 2 gets it right
    outputs = [{"output": n, "iou_per_class": {"a": 0.0, "b": 0.0, "c": None}, "confusion_matrix": cm}
               for n, cm in ((1, [[4, 4, 0], [0, 2, 0], [0, 0, 0]]), (2, [[8, 0, 0], [0, 2, 0], [0, 0, 0]]))]
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"outputs": outputs}))
    module.main([str(path), "--outputs", "1", "2"])
    header, _, a, b, c = capsys.readouterr().out.splitlines()
    assert header == ("| class | labelled | predicted 1 | predicted 2 | recall 1 | recall 2 | "
                      "precision 1 | precision 2 |")
    assert a == "| a | 0.800 | 0.400 | 0.800 | 0.500 | 1.000 | 1.000 | 1.000 |"
    assert b == "| b | 0.200 | 0.600 | 0.200 | 1.000 | 1.000 | 0.333 | 1.000 |"
    assert c == "| c | 0.000 | 0.000 | 0.000 | - | - | - | - |"
    with pytest.raises(SystemExit, match="no output 3 in the evaluation"):
        module.main([str(path), "--outputs", "3"])
    for output in outputs:
        del output["confusion_matrix"]
    path.write_text(json.dumps({"outputs": outputs}))
    with pytest.raises(SystemExit, match="no confusion matrices"):
        module.main([str(path), "--outputs", "1"])


def test_output_table_puts_evaluations_side_by_side(tmp_path, capsys):
    module = load_script("tools", "output_table")

    def evaluation(name, mious, auc):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"outputs": [{"output": n + 1, "miou": m} for n, m in enumerate(mious)],
                                    "normalized_auc": auc}))
        return str(path)

    a, b, c = evaluation("a", [0.1, 0.4], 0.2), evaluation("b", [0.3, 0.2], 0.1), evaluation("c", [0.5, 0.6], 0.3)
    module.main([f"one={a}", f"seeds={b},{c}"])
    assert capsys.readouterr().out.splitlines() == [
        "| output | one | seeds |", "|---:|---:|---:|",
        "| 1 | 0.100 | 0.400 (0.300-0.500) |",
        "| 2 | 0.400 | 0.400 (0.200-0.600) |",
        "| AUC' | 0.200 | 0.200 (0.100-0.300) |"]
    with pytest.raises(SystemExit, match="expected LABEL=PATH"):
        module.main([a])
    with pytest.raises(SystemExit, match="nope.json"):
        module.main([f"x={tmp_path / 'nope.json'}"])
    three = evaluation("three", [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(SystemExit, match="seeds: its evaluations differ in their number of outputs"):
        module.main([f"seeds={a},{three}"])
