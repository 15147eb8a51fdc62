"""The two modes of a study: `smoke` (a test that a notebook runs) and `full` (the
budget of the committed results); see `studies`."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    fit: dict  # FitConfig fields of every run
    network: dict  # model arguments of every run
    widths: dict  # f of the shared and of the independent network
    input_size: tuple  # image size for costs and latency
    mac_budget: float  # the architecture search's budget for the last output at `input_size`
    runs: str = None  # run folders, relative to the repository (None: a temporary folder)
    description: str = ""


MODES = {
    "smoke": Mode(
        # bn_batches=0: a test that the notebook runs (the recalibration has its own tests)
        "smoke", fit=dict(data="builtin", limit=16, epochs=1, batch_size=8, bn_batches=0),
        network=dict(num_iterations=4, num_scales=2, expansion=2, dropout=0.0, l2=0.0),
        widths={"shared": 12, "independent": 8}, input_size=(64, 64), mac_budget=9.0e5,
        description="built-in data, 16 images, 1 epoch, N=4, L=2, t=2 (a test that the notebook runs)",
    ),
    "full": Mode(
        # bn_batches=0: the committed results were trained before fit recalibrated its batch norms
        "full", fit=dict(data="camvid", scale=4, epochs=15, batch_size=8, bn_batches=0),
        network=dict(dropout=0.0, l2=0.0),
        widths={"shared": 51, "independent": 29}, input_size=(360, 480), mac_budget=2.2e9,
        runs="runs/studies/camvid_s4_e15",
        description="CamVid train (367 images) at 90x120 (88x120 crops), 15 epochs, batch 8, "
                    "evaluated on CamVid val (101 images) at 90x120; the paper: 480x360, 2000 epochs "
                    "(4000 for weight sharing)",
    ),
}


def mode_from_env(default="smoke"):
    """The mode named by the environment variable ITNET_NOTEBOOK_MODE (else `default`)."""
    name = os.environ.get("ITNET_NOTEBOOK_MODE", default)
    if name not in MODES:
        raise ValueError(f"ITNET_NOTEBOOK_MODE={name!r}: expected one of {sorted(MODES)}")
    return name


def data_dir_from_env():
    """The dataset folder named by ITNET_DATA_DIR (`lab.notebooks --data-dir` sets it), else
    None: the dataset's default folder."""
    return os.environ.get("ITNET_DATA_DIR") or None
