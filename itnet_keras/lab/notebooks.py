"""Run the study notebooks: `python -m itnet_keras.lab.notebooks notebooks/NAME.py [--mode smoke|full]`.

Each notebook is kept twice: `NAME.py`, the source to edit (jupytext percent format), and
`NAME.ipynb`, the executed notebook to read. This command executes the `.py` with nbclient
(working folder `notebooks/`, `ITNET_NOTEBOOK_MODE` set to the mode, `ITNET_DATA_DIR` to
`--data-dir` where given: the CamVid folder of full mode, default the one exported as
`ITNET_DATA_DIR`, else `datasets.default_data_dir`'s) and writes the
executed notebook to `--output`, or by default: in full mode to the committed `NAME.ipynb`,
in smoke mode to `runs/notebooks/NAME.ipynb` (smoke numbers mean nothing). `--check` only
reports whether each `.ipynb` still holds the cells of its `.py`; `--markdown` copies edited
prose (markdown cells) into the executed `.ipynb` without running it again, and refuses if
code changed.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from itnet_keras.cli import description
from itnet_keras.files import write_atomic
from itnet_keras.lab.modes import MODES, data_dir_from_env


@contextlib.contextmanager
def _environment(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# TensorFlow's start-up lines on stderr (CUDA probing, CPU features): noise in a notebook.
NOISE = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ", "To enable the following",
         "[IPKernelApp] WARNING", "INFO: Created TensorFlow Lite XNNPACK delegate")


def _drop_noise(notebook):
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                output.text = "".join(line for line in output.text.splitlines(keepends=True)
                                      if not line.startswith(NOISE))
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and not o.text.strip())]


def default_output(source, mode):
    """Where an executed notebook goes: a full run replaces the committed, paired .ipynb; a
    smoke run, whose numbers mean nothing, goes to `runs/notebooks/` and leaves it alone."""
    source = Path(source)
    if mode == "full":
        return source.with_suffix(".ipynb")
    return Path("runs", "notebooks", source.with_suffix(".ipynb").name)


def execute(source, mode="smoke", output=None, timeout=3600, data_dir=None):
    """Execute notebook `source` (.py) in `mode` (its data in `data_dir`, default: the
    dataset's own folder); write it to `output` (default: `default_output`)."""
    source = Path(source)
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {sorted(MODES)}")
    if not source.is_file():
        raise FileNotFoundError(f"notebook source {source} does not exist")
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # absolute (the kernel runs in notebooks/); without --data-dir, the ITNET_DATA_DIR exported, if any
    data_dir = data_dir if data_dir is not None else data_dir_from_env()
    given = {} if data_dir is None else {"ITNET_DATA_DIR": str(Path(data_dir).resolve())}
    with _environment(ITNET_NOTEBOOK_MODE=mode, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2", **given):
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(source.parent)}}).execute()
    _drop_noise(notebook)
    output = Path(output or default_output(source, mode))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, nbformat.writes(notebook))
    return notebook


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def drift(source):
    """Cells in which `source` (.py) and its paired .ipynb differ: [(index, py cell, ipynb cell)]."""
    source = Path(source)
    paired = source.with_suffix(".ipynb")  # both must exist (`main --check` says which one does not)
    a, b = cells(jupytext.read(source)), cells(nbformat.read(paired, as_version=4))
    differ = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        differ.append((min(len(a), len(b)), f"{len(a)} cells", f"{len(b)} cells"))
    return differ


def update_markdown(source):
    """Copy the markdown cells of `source` (.py) into its executed .ipynb, keeping the code
    cells and their outputs: for prose edits after a long run. Refused when a code cell
    changed, since its outputs would no longer be the code's."""
    source = Path(source)
    paired = source.with_suffix(".ipynb")
    new, executed = jupytext.read(source), nbformat.read(paired, as_version=4)
    same_kinds = [c.cell_type for c in new.cells] == [c.cell_type for c in executed.cells]
    same_code = all(a.source.strip() == b.source.strip() for a, b in zip(new.cells, executed.cells)
                    if a.cell_type == "code")
    if not (same_kinds and same_code):
        raise ValueError(f"{source}: its code cells differ from {paired}; execute it instead")
    for cell, edited in zip(executed.cells, new.cells):
        if cell.cell_type == "markdown":
            cell.source = edited.source
    write_atomic(paired, nbformat.writes(executed))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.lab.notebooks", description=description(__doc__))
    parser.add_argument("sources", nargs="+", help="notebook sources (notebooks/*.py)")
    parser.add_argument("--mode", default="smoke", help="smoke (minutes, built-in data) or full (CamVid)")
    parser.add_argument("--output", help="where to write the executed notebook (one source only; default: the paired "
                        ".ipynb in full mode, runs/notebooks/NAME.ipynb in smoke mode)")
    parser.add_argument("--data-dir", help="the dataset folder (full mode: CamVid; default: $ITNET_DATA_DIR, else ../shared/data/camvid "
                        "where it exists, else data/camvid)")
    parser.add_argument("--check", action="store_true", help="only check that each .ipynb matches its .py")
    parser.add_argument("--markdown", action="store_true",
                        help="only copy the markdown cells of each .py into its executed .ipynb")
    args = parser.parse_args(argv)
    if args.output and len(args.sources) > 1:
        parser.error("--output takes one source")
    status = 0
    for source in args.sources:
        if args.check:
            if not Path(source).is_file():
                print(f"error: notebook source {source} does not exist", file=sys.stderr)
                return 2
            if not Path(source).with_suffix(".ipynb").is_file():
                print(f"{source}: {Path(source).with_suffix('.ipynb')} is missing (execute it with --mode full)",
                      file=sys.stderr)
                status = 1
                continue
            for index, py, ipynb in drift(source):
                print(f"{source}: cell {index} differs from the .ipynb:\n  {py!r}\n  {ipynb!r}", file=sys.stderr)
                status = 1
            continue
        try:
            if args.markdown:
                update_markdown(source)
                print(f"updated the markdown cells of {Path(source).with_suffix('.ipynb')}")
                continue
            execute(source, args.mode, args.output, data_dir=args.data_dir)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except CellExecutionError as error:  # the notebook's own error, in one line (its traceback: --output)
            print(f"error: {source} stopped in a cell: {error.ename}: {error.evalue}", file=sys.stderr)
            return 2
        print(f"executed {source} ({args.mode}) into {args.output or default_output(source, args.mode)}")
    if args.check and not status:
        print(f"{len(args.sources)} notebook(s): each .ipynb holds the cells of its .py")
    return status


if __name__ == "__main__":
    sys.exit(main())
