"""The paper's ablations as importable functions: what the notebooks in `notebooks/` call.

A notebook opens a `Study` in one of two modes:

- `smoke`: the built-in data, a network shrunk to N=4, L=2, one epoch on 16 images;
  a minute on a CPU. Runs and results go to a temporary folder, removed with the study
  (runs to $ITNET_SMOKE_RUNS when set, so that notebooks run one after another reuse each
  other's runs). CI runs every notebook so.
- `full`: CamVid at a quarter of its resolution (90x120 images, 88x120 crops), 15 epochs,
  the paper's networks (N=16, L=3, K=1, f=51 shared, f=29 independent); costs and latency
  at the paper's 480x360. Run folders go to `runs/studies/`, results (JSON and PNG) to
  `notebooks/results/<study>/`, which is committed.

Ablation runs use neither dropout nor L2 (SPEC s.4). A run folder that already holds a
finished run with the same configuration is reused; an interrupted one is resumed.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from itnet_keras import files
from itnet_keras.config import FitConfig
from itnet_keras.costs import output_costs
from itnet_keras.evaluate import load_itnet
from itnet_keras.fit import run
from itnet_keras.lab.modes import MODES, data_dir_from_env
from itnet_keras.model import build_itnet
from itnet_keras.pipeline import make_dataset
from itnet_keras.presets import resolve_model_args, validate_model_args

PRESET_OF = {"shared": "camvid_shared", "independent": "camvid_independent"}
# Settings a run folder may hold otherwise and still be the same run, which a resumed run takes
# from the study: bn_batches (after training only), data_dir (where the same data lies on this machine).
LOCAL_SETTINGS = {"bn_batches", "data_dir"}


def _differences(saved, config, model):
    """Names of the settings in which a run folder's config.json differs from `config` and
    `model` (its resolved model arguments; the folder and --resume ignored)."""
    wanted = dataclasses.asdict(config)
    ignored = {"output", "resume", *LOCAL_SETTINGS, *FitConfig.MODEL_FIELDS}
    differs = [k for k in wanted if k not in ignored and saved["fit"].get(k) != wanted[k]]
    differs += [k for k in model if k != "num_classes" and saved["model"].get(k) != model[k]]
    return sorted(differs)


def _elapsed_seconds(folder, result):
    """A run's training and evaluation time: its epochs over all its starts and its final
    evaluation (`fit` records both); for a run trained before that record, the seconds from
    its last start (config.json) to its evaluation (evaluation.json)."""
    source = result.get("model", {})
    if source.get("train_seconds") is not None:
        return source["train_seconds"] + source["evaluate_seconds"]
    return (folder / "evaluation.json").stat().st_mtime - (folder / "config.json").stat().st_mtime


@dataclass
class Study:
    """One notebook's runs and results. `repo` is the repository root (notebooks pass "..")."""

    name: str
    mode: str = "smoke"
    repo: str = "."
    started: float = field(default_factory=time.time)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {sorted(MODES)}")
        self.settings = MODES[self.mode]
        # One process trains many models: Keras then retraces, and TensorFlow says so each time.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        repo = Path(self.repo)
        if self.settings.runs is None:
            scratch = Path(tempfile.mkdtemp(prefix=f"itnet_{self.name}_"))
            weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)  # with the study, or at exit
            # Notebooks run one after another (as in the tests) may share their smoke runs.
            self.runs = Path(os.environ.get("ITNET_SMOKE_RUNS", scratch / "runs"))
            self.results = scratch / "results"
        else:
            self.runs, self.results = repo / self.settings.runs, repo / "notebooks" / "results" / self.name
        self.committed = repo / "notebooks" / "results" / self.name / "results.json"
        self.results.mkdir(parents=True, exist_ok=True)
        self._resolved = {}

    # -- networks and runs ----------------------------------------------------------

    def network(self, variant, **overrides):
        """Model arguments of the `shared` or `independent` network of this mode."""
        return {**self.settings.network, "width": self.settings.widths[variant],
                "weight_sharing": variant == "shared", **overrides}

    def resolved(self, variant):
        """All model arguments of the `shared` or `independent` network (preset, then this
        mode's network), resolved once per study."""
        if variant not in self._resolved:
            self._resolved[variant] = resolve_model_args(PRESET_OF[variant], **self.network(variant))
        return self._resolved[variant]

    def schedule(self, kind):
        """An output-weight schedule scaled to this mode's N: all, single, late, thinned, linear."""
        n = self.resolved("shared")["num_iterations"]
        return {"all": "all", "single": f"single:{n}", "late": f"last:{max(1, n // 4)}",
                "thinned": f"thinned:{max(1, n // 4)}", "linear": "linear"}[kind]

    def costs(self, variant, **overrides):
        """Cost rows per output (see `costs.output_costs`) at this mode's `input_size`."""
        size = self.settings.input_size
        return output_costs(build_itnet(PRESET_OF[variant], input_shape=(*size, 3),
                                        **self.network(variant, **overrides)), size)

    def config(self, variant, output_weights="all", epochs=None, **overrides):
        """The FitConfig of one run; its folder name says what it is (`independent_f29_single16`)."""
        network = self.network(variant, **overrides)
        fit = {**self.settings.fit, **({} if epochs is None else {"epochs": epochs})}
        usual = self.resolved(variant)
        extra = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()) if k != "width" and usual[k] != v)
        extra += "" if epochs is None else f"_e{epochs}"
        name = f"{variant}_f{network['width']}_{output_weights.replace(':', '')}{extra}"
        return FitConfig(preset=PRESET_OF[variant], output=str(self.runs / name), output_weights=output_weights,
                         data_dir=data_dir_from_env(), **fit, **network)

    def train(self, variant, output_weights="all", epochs=None, **overrides):
        """Train (or reuse, or resume) one run; returns its evaluation with `elapsed_s` and `config`.

        `overrides` are model arguments; `epochs` replaces the mode's epochs."""
        config = self.config(variant, output_weights, epochs, **overrides)
        folder = Path(config.output)
        if (folder / "config.json").is_file():
            model = {**self.resolved(variant), **overrides}
            validate_model_args(model)
            differs = _differences(json.loads((folder / "config.json").read_text()), config, model)
            if differs:
                raise ValueError(f"run folder {folder} holds another configuration (differs in {differs}); "
                                 "move it away or choose another run name")
        if (folder / "evaluation.json").is_file():
            result = json.loads((folder / "evaluation.json").read_text())
        else:
            resume = (folder / "checkpoint.npz").is_file()
            result = run(dataclasses.replace(config, resume=resume), given=LOCAL_SETTINGS if resume else ())
        return {**result, "elapsed_s": _elapsed_seconds(folder, result), "config": dataclasses.asdict(config)}

    def dataset(self, split="val", batch_size=4):
        """A split of this mode's data, prepared as for training's validation (no augmentation)."""
        fit = self.settings.fit
        return make_dataset(fit["data"], split, batch_size=batch_size, scale=fit.get("scale", 1),
                            limit=fit.get("limit"), data_dir=data_dir_from_env())

    @staticmethod
    def trained_model(result):
        """The best model of a run returned by `train`."""
        return load_itnet(Path(result["config"]["output"]) / "best.keras")

    # -- results ----------------------------------------------------------------------

    def path(self, filename):
        return self.results / filename

    def save(self, results, command=None, epochs=None):
        """Write results.json (with mode, budget, wall time and the command); returns its path.
        `epochs`: the runs' epochs where the notebook replaced the mode's (as `train` takes them)."""
        command = command or f"python -m itnet_keras.lab.notebooks notebooks/{self.name}.py --mode {self.mode}"
        budget = self.settings.description
        if epochs is not None:
            mode_epochs = f"{self.settings.fit['epochs']} epoch"
            if mode_epochs not in budget:
                raise ValueError(f"the {self.mode} mode's description does not name its epochs ({mode_epochs}s)")
            budget = budget.replace(mode_epochs, f"{epochs} epoch", 1)
        data = {"study": self.name, "mode": self.mode, "budget": budget,
                "wall_s": round(time.time() - self.started, 1), "command": command, **results}
        files.write_atomic(self.path("results.json"), json.dumps(data, indent=1, default=_json_default))
        return self.path("results.json")

    def committed_results(self):
        """The full-mode results committed in the repository, or None."""
        return json.loads(self.committed.read_text()) if self.committed.is_file() else None


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


# -- summaries -------------------------------------------------------------------------


def summary(result):
    """The numbers a study compares: first/last/peak mIoU, AUC', MACs, params, graph, state,
    and the epoch of the model evaluated (`fit` keeps the one whose last output scored best on val)."""
    first, last = result["outputs"][0], result["outputs"][-1]
    return {"epoch": result.get("model", {}).get("epoch"), "miou_first": first["miou"], "miou_last": last["miou"],
            "miou_peak": max(o["miou"] for o in result["outputs"]),
            "normalized_auc": result["normalized_auc"], "macs_last": last["macs"], "params": last["params"],
            "graph_mb_collapsed": last["graph_bytes_collapsed"] / 1e6,
            "graph_mb_unrolled": last["graph_bytes_unrolled"] / 1e6,
            "state_mb": last["state_bytes"] / 1e6,
            "train_min": None if result.get("elapsed_s") is None else result["elapsed_s"] / 60}


def markdown_table(rows, columns):
    """rows: {label: {column: value}}; columns: {column: (header, format)}."""
    return files.markdown_table(["", *(h for h, _ in columns.values())],
                 [[label, *("" if row.get(c) is None else fmt.format(row[c]) for c, (_, fmt) in columns.items())]
                  for label, row in rows.items()], align="l" + "r" * len(columns))


SUMMARY_COLUMNS = {
    "miou_first": ("mIoU out 1", "{:.3f}"), "miou_last": ("mIoU out N", "{:.3f}"),
    "miou_peak": ("peak mIoU", "{:.3f}"), "normalized_auc": ("AUC'", "{:.3f}"),
    "train_min": ("train+eval min", "{:.1f}"),
}
