"""Every study notebook runs in smoke mode, and each .ipynb holds the cells of its .py."""

from pathlib import Path

import nbformat
import pytest

from itnet_keras.lab import notebooks

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_is_a_notebook_per_study():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_matches_its_py(source):
    assert notebooks.drift(source) == []


def test_drift_is_reported(tmp_path, capsys):
    source = tmp_path / "n.py"
    source.write_text(NOTEBOOKS[0].read_text())
    assert notebooks.main([str(source), "--check"]) == 1  # no .ipynb yet
    assert f"{tmp_path / 'n.ipynb'} is missing" in capsys.readouterr().err
    (tmp_path / "gone.ipynb").write_text(NOTEBOOKS[0].with_suffix(".ipynb").read_text())
    assert notebooks.main([str(tmp_path / "gone.py"), "--check"]) == 2  # was: a FileNotFoundError traceback
    assert f"error: notebook source {tmp_path / 'gone.py'} does not exist" in capsys.readouterr().err
    paired = nbformat.read(NOTEBOOKS[0].with_suffix(".ipynb"), as_version=4)
    paired.cells[1].source += "\nprint('edited in the notebook only')"
    nbformat.write(paired, tmp_path / "n.ipynb")
    assert notebooks.main([str(source), "--check"]) == 1
    assert "cell 1 differs" in capsys.readouterr().err
    assert notebooks.main([str(NOTEBOOKS[0]), "--check"]) == 0
    assert "1 notebook(s): each .ipynb holds the cells of its .py" in capsys.readouterr().out


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """One run folder for all notebooks: the same smoke network is trained once."""
    return tmp_path_factory.mktemp("smoke_runs")


# The five slowest smoke runs (about 35 to 80 s each on 2 cores) are marked large to keep the
# default suite under 15 minutes; `python -m pytest -m large` runs them.
SLOW = ("01_architecture_costs", "02_architecture_search", "03_multi_output", "04_weight_sharing",
        "05_batchnorm_width")


@pytest.mark.parametrize("source", [pytest.param(p, marks=pytest.mark.large) if p.stem in SLOW else p
                                    for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(source, tmp_path, smoke_runs, monkeypatch):
    """The command, as the README runs it: the smoke notebook lands in runs/notebooks/, and the
    committed (full-mode) .ipynb beside the source is left as it was."""
    monkeypatch.setenv("ITNET_SMOKE_RUNS", str(smoke_runs))
    monkeypatch.chdir(tmp_path)
    committed = source.with_suffix(".ipynb").read_bytes()
    assert notebooks.main([str(source)]) == 0
    executed = nbformat.read(tmp_path / "runs" / "notebooks" / source.with_suffix(".ipynb").name, as_version=4)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"
    assert source.with_suffix(".ipynb").read_bytes() == committed


def test_bad_mode_and_missing_source_are_named(tmp_path, capsys):
    assert notebooks.main([str(NOTEBOOKS[0]), "--mode", "huge"]) == 2
    assert "--mode 'huge'" in capsys.readouterr().err
    assert notebooks.main([str(tmp_path / "none.py")]) == 2
    assert "none.py does not exist" in capsys.readouterr().err


def test_data_dir_reaches_the_notebook_and_its_error_is_one_line(tmp_path, capsys, monkeypatch):
    """`--data-dir` reaches the notebook's studies (ITNET_DATA_DIR, absolute: the kernel runs
    in the notebook's folder); an error in a cell is one line (was: nbclient's traceback of
    a hundred lines, and full mode could not be pointed at a CamVid folder)."""
    source = tmp_path / "n.py"
    source.write_text("# %%\nfrom itnet_keras.lab import modes\n"
                      "raise ValueError(f'no data in {modes.data_dir_from_env()}')\n")
    assert notebooks.main([str(source), "--data-dir", "cam", "--output", str(tmp_path / "n.ipynb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {source} stopped in a cell: ValueError: no data in {Path('cam').resolve()}"
    monkeypatch.setenv("ITNET_DATA_DIR", "exported")  # kept without --data-dir, made absolute as well
    assert notebooks.main([str(source), "--output", str(tmp_path / "n.ipynb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {source} stopped in a cell: ValueError: no data in {Path('exported').resolve()}"


def test_markdown_edits_reach_the_ipynb_and_code_edits_are_refused(tmp_path, capsys):
    source, paired = tmp_path / "n.py", tmp_path / "n.ipynb"
    text = NOTEBOOKS[0].read_text()
    paired.write_text(NOTEBOOKS[0].with_suffix(".ipynb").read_text())
    outputs = [c.outputs for c in nbformat.read(paired, as_version=4).cells if c.cell_type == "code"]
    source.write_text(text.replace("# # Study 1", "# # Study 1 (edited prose)", 1))
    assert notebooks.drift(source) != []
    assert notebooks.main([str(source), "--markdown"]) == 0
    assert notebooks.drift(source) == []
    updated = nbformat.read(paired, as_version=4)
    assert "(edited prose)" in updated.cells[0].source
    assert [c.outputs for c in updated.cells if c.cell_type == "code"] == outputs  # outputs kept
    source.write_text(text.replace("import tempfile", "import tempfile  # edited code", 1))
    assert notebooks.main([str(source), "--markdown"]) == 2
    assert "code cells differ" in capsys.readouterr().err
