"""Writing files: atomically (a temporary name beside the target, then a rename), result
tables (markdown beside JSON) and figures. A leaf: it imports nothing of the package."""

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path


@contextlib.contextmanager
def output_folder(folder):
    """The `--output` folder, made if missing (its parents too); the folders made here are
    removed again if the work inside fails before writing into them. OSError naming `--output`
    if it cannot be made or written into (tried with a file made and removed at once)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(f"--output {folder}: a file, not a folder")
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except OSError as error:
        _remove_empty(made)
        raise OSError(f"--output {folder}: cannot write there ({error.strerror or error})") from None
    try:
        yield folder
    except BaseException:
        _remove_empty(made)
        raise


def check_writable(folder):
    """OSError unless a file can be made in `folder` (one is made and removed at once)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass


def _remove_empty(folders):
    for path in folders:  # innermost first: each is empty once the one inside it is gone
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def temporary_path(path, suffix=".tmp"):
    """A hidden name beside `path`, unique to this call (process id and a random part)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """A temporary name beside `path` to write to: flushed to disk and renamed to `path` when
    the block ends, removed if it raises (`suffix`: for writers that want a file type, e.g. `.tmp.keras`)."""
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # on disk before the rename, as `write_atomic` does
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, data, mode="w"):
    """Write a file through a temporary name and rename it into place."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        handle.write(data)


def write_result_files(path, command, markdown, data):
    """A results table: `path` (the command that made it, then `markdown`) and
    `path` with suffix `.json` (`data`), both written atomically."""
    write_atomic(path, f"`{command}`\n\n{markdown}\n")
    write_atomic(Path(path).with_suffix(".json"), json.dumps(data, indent=1))


def pyplot():
    """matplotlib.pyplot, with the headless backend chosen before pyplot loads (imported here,
    where a figure is drawn: commands that draw nothing skip matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=120):
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt  # lazy: matplotlib is only needed by whoever made `fig`

    try:
        with atomic_path(path, ".tmp.png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def markdown_table(header, rows, align=None):
    """A markdown table: `header` and each row are lists of cell texts; `align` has one
    letter per column, `l` (left) or `r` (right; the default of every column)."""
    align = align or "r" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r}: expected {len(header)} letters, one per column")

    def line(cells):
        return "|" + "".join(f" {cell} |" for cell in cells)

    top = "|" + "".join(f" {cell} |" if cell != "" else " |" for cell in header)  # a blank corner: "| |"
    rule = "|" + "".join("---|" if a == "l" else "---:|" for a in align)
    return "\n".join([top, rule, *(line(row) for row in rows)])
