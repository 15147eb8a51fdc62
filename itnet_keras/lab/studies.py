"""The paper's ablations as importable functions: what the notebooks in `notebooks/` call.

A notebook opens a `Study` in one of two modes:

- `smoke`: the built-in data, a network shrunk to N=4, L=2, one epoch on 16 images;
  a minute on a CPU. Runs and results go to a temporary folder (runs to $ITNET_SMOKE_RUNS
  when set, so that notebooks run one after another reuse each other's runs). CI runs every
  notebook so.
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from itnet_keras.config import FitConfig
from itnet_keras.evaluate import save_figure, write_atomic


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
        "smoke", fit=dict(data="builtin", limit=16, epochs=1, batch_size=8),
        network=dict(num_iterations=4, num_scales=2, expansion=2, dropout=0.0, l2=0.0),
        widths={"shared": 12, "independent": 8}, input_size=(64, 64), mac_budget=9.0e5,
        description="built-in data, 16 images, 1 epoch, N=4, L=2, t=2 (a test that the notebook runs)",
    ),
    "full": Mode(
        "full", fit=dict(data="camvid", scale=4, epochs=15, batch_size=8),
        network=dict(dropout=0.0, l2=0.0),
        widths={"shared": 51, "independent": 29}, input_size=(360, 480), mac_budget=2.2e9,
        runs="runs/studies/camvid_s4_e15",
        description="CamVid train (367 images) at 90x120 (88x120 crops), 15 epochs, batch 8, "
                    "evaluated on CamVid val (101 images) at 90x120; the paper: 480x360, 2000 epochs "
                    "(4000 for weight sharing)",
    ),
}

PRESET_OF = {"shared": "camvid_shared", "independent": "camvid_independent"}


def mode_from_env(default="smoke"):
    """The mode named by the environment variable ITNET_NOTEBOOK_MODE (else `default`)."""
    name = os.environ.get("ITNET_NOTEBOOK_MODE", default)
    if name not in MODES:
        raise ValueError(f"ITNET_NOTEBOOK_MODE={name!r}: expected one of {sorted(MODES)}")
    return name


def _differences(saved, config):
    """Names of the settings in which a run folder's config.json differs from `config`
    (model arguments compared after resolution; the folder and --resume ignored)."""
    from itnet_keras.presets import resolve_model_args

    wanted = dataclasses.asdict(config)
    ignored = {"output", "resume", *FitConfig.MODEL_FIELDS}
    differs = [k for k in wanted if k not in ignored and saved["fit"].get(k) != wanted[k]]
    model = resolve_model_args(config.preset, **config.model_overrides())
    differs += [k for k in model if k != "num_classes" and saved["model"].get(k) != model[k]]
    return sorted(differs)


def _elapsed_seconds(folder):
    """Seconds from a run's start (config.json) to its evaluation (evaluation.json)."""
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
            # Notebooks run one after another (as in the tests) may share their smoke runs.
            self.runs = Path(os.environ.get("ITNET_SMOKE_RUNS", scratch / "runs"))
            self.results = scratch / "results"
        else:
            self.runs, self.results = repo / self.settings.runs, repo / "notebooks" / "results" / self.name
        self.committed = repo / "notebooks" / "results" / self.name / "results.json"
        self.results.mkdir(parents=True, exist_ok=True)

    # -- networks and runs ----------------------------------------------------------

    def network(self, variant, **overrides):
        """Model arguments of the `shared` or `independent` network of this mode."""
        return {**self.settings.network, "width": self.settings.widths[variant],
                "weight_sharing": variant == "shared", **overrides}

    def schedule(self, kind):
        """An output-weight schedule scaled to this mode's N: all, single, late, thinned, linear."""
        n = self.settings.network.get("num_iterations", 16)
        return {"all": "all", "single": f"single:{n}", "late": f"last:{max(1, n // 4)}",
                "thinned": f"thinned:{max(1, n // 4)}", "linear": "linear"}[kind]

    def costs(self, variant, **overrides):
        """Cost rows per output (see `costs.output_costs`) at this mode's `input_size`."""
        from itnet_keras.costs import output_costs
        from itnet_keras.model import build_itnet

        size = self.settings.input_size
        return output_costs(build_itnet(PRESET_OF[variant], input_shape=(*size, 3),
                                        **self.network(variant, **overrides)), size)

    def config(self, variant, output_weights="all", epochs=None, **overrides):
        """The FitConfig of one run; its folder name says what it is (`independent_f29_single16`)."""
        from itnet_keras.presets import resolve_model_args

        network = self.network(variant, **overrides)
        fit = {**self.settings.fit, **({} if epochs is None else {"epochs": epochs})}
        usual = resolve_model_args(PRESET_OF[variant], **self.network(variant))
        extra = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()) if k != "width" and usual[k] != v)
        extra += "" if epochs is None else f"_e{epochs}"
        name = f"{variant}_f{network['width']}_{output_weights.replace(':', '')}{extra}"
        return FitConfig(preset=PRESET_OF[variant], output=str(self.runs / name), output_weights=output_weights,
                         **fit, **network)

    def train(self, variant, output_weights="all", epochs=None, **overrides):
        """Train (or reuse, or resume) one run; returns its evaluation with `elapsed_s` and `config`.

        `overrides` are model arguments; `epochs` replaces the mode's epochs."""
        from itnet_keras.fit import run

        config = self.config(variant, output_weights, epochs, **overrides)
        folder = Path(config.output)
        if (folder / "config.json").is_file():
            differs = _differences(json.loads((folder / "config.json").read_text()), config)
            if differs:
                raise ValueError(f"run folder {folder} holds another configuration (differs in {differs}); "
                                 "move it away or choose another run name")
        if (folder / "evaluation.json").is_file():
            result = json.loads((folder / "evaluation.json").read_text())
        else:
            resume = (folder / "checkpoint.npz").is_file()
            result = run(dataclasses.replace(config, resume=resume))
        return {**result, "elapsed_s": _elapsed_seconds(folder), "config": dataclasses.asdict(config)}

    def dataset(self, split="val", batch_size=4):
        """A split of this mode's data, prepared as for training's validation (no augmentation)."""
        from itnet_keras.pipeline import make_dataset

        fit = self.settings.fit
        return make_dataset(fit["data"], split, batch_size=batch_size, scale=fit.get("scale", 1),
                            limit=fit.get("limit"))

    @staticmethod
    def trained_model(result):
        """The best model of a run returned by `train`."""
        from itnet_keras.evaluate import load_itnet

        return load_itnet(Path(result["config"]["output"]) / "best.keras")

    # -- results ----------------------------------------------------------------------

    def path(self, filename):
        return self.results / filename

    def save(self, results, command=None):
        """Write results.json (with mode, budget, wall time and the command); returns its path."""
        command = command or f"python -m itnet_keras.notebooks notebooks/{self.name}.py --mode {self.mode}"
        data = {"study": self.name, "mode": self.mode, "budget": self.settings.description,
                "wall_s": round(time.time() - self.started, 1), "command": command, **results}
        write_atomic(self.path("results.json"), json.dumps(data, indent=1, default=_json_default))
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
    """The numbers a study compares: first/last/peak mIoU, AUC', MACs, params, graph, state."""
    first, last = result["outputs"][0], result["outputs"][-1]
    return {"miou_first": first["miou"], "miou_last": last["miou"],
            "miou_peak": max(o["miou"] for o in result["outputs"]),
            "normalized_auc": result["normalized_auc"], "macs_last": last["macs"], "params": last["params"],
            "graph_mb_collapsed": last["graph_bytes_collapsed"] / 1e6,
            "graph_mb_unrolled": last["graph_bytes_unrolled"] / 1e6,
            "state_mb": last["state_bytes"] / 1e6,
            "train_min": None if result.get("elapsed_s") is None else result["elapsed_s"] / 60}


def markdown_table(rows, columns):
    """rows: {label: {column: value}}; columns: {column: (header, format)}."""
    lines = ["| | " + " | ".join(h for h, _ in columns.values()) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, row in rows.items():
        cells = [("" if row.get(c) is None else fmt.format(row[c])) for c, (_, fmt) in columns.items()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SUMMARY_COLUMNS = {
    "miou_first": ("mIoU out 1", "{:.3f}"), "miou_last": ("mIoU out N", "{:.3f}"),
    "miou_peak": ("peak mIoU", "{:.3f}"), "normalized_auc": ("AUC'", "{:.3f}"),
    "train_min": ("train+eval min", "{:.1f}"),
}


# -- architecture search (Sec. 3.1) ------------------------------------------------------


def macs_of(input_size, **model_args):
    """MACs of the last output at `input_size` (from the cost model)."""
    from itnet_keras.costs import output_costs
    from itnet_keras.model import build_itnet

    model = build_itnet(input_shape=(*input_size, 3), **model_args)
    return output_costs(model, input_size)[-1]["macs"]


def largest_width(budget, input_size, **model_args):
    """The largest f whose last output costs less than `budget` MACs (bisection; MACs grow with f)."""
    low, high = 7, 8
    if macs_of(input_size, width=low, **model_args) >= budget:
        raise ValueError(f"even f=7 costs at least {budget:.3g} MACs at {input_size}")
    while macs_of(input_size, width=high, **model_args) < budget:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if macs_of(input_size, width=middle, **model_args) < budget else (low, middle)
    return low


def select_architecture(rows, tolerance=0.02):
    """The paper's selection rule. `rows`: dicts with `architecture`, `variant` (shared or
    independent), `normalized_auc` and `miou_peak`. Per variant, networks whose peak mIoU is
    more than `tolerance` below the best peak are discarded and the rest ranked by AUC'
    (1 = best); the architecture with the lowest average rank over both variants wins.
    Returns (winner, {architecture: {variant: rank or None}})."""
    ranks = {}
    for variant in sorted({r["variant"] for r in rows}):
        group = [r for r in rows if r["variant"] == variant]
        best_peak = max(r["miou_peak"] for r in group)
        kept = sorted((r for r in group if r["miou_peak"] >= best_peak - tolerance),
                      key=lambda r: -r["normalized_auc"])
        for r in group:
            ranks.setdefault(r["architecture"], {})[variant] = None
        for rank, r in enumerate(kept, start=1):
            ranks[r["architecture"]][variant] = rank
    variants = {r["variant"] for r in rows}
    complete = {a: np.mean(list(v.values())) for a, v in ranks.items()
                if set(v) == variants and None not in v.values()}
    if not complete:
        raise ValueError("no architecture survives the peak-mIoU rule in every variant")
    return min(complete, key=complete.get), ranks


# -- figures -----------------------------------------------------------------------------


def _axes(columns=1, width=5.5, height=3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return fig, list(axes.flat)


def _dress(ax, xlabel, ylabel, integer_x=False):
    """Axis labels (with units), a light grid and the legend."""
    if integer_x:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_costs_per_output(costs, path):
    """Fig. 1b-d: MACs, graph size (both views) and depth over the output n, per network."""
    fig, (macs, graph, depth) = _axes(3, width=4.2, height=3.4)
    for label, rows in costs.items():
        n = [r["output"] for r in rows]
        line, = macs.plot(n, [r["macs"] / 1e9 for r in rows], "o-", markersize=3, label=label)
        graph.plot(n, [r["graph_bytes_collapsed"] / 1e6 for r in rows], "o-", markersize=3, color=line.get_color(),
                   label=f"{label}, loop collapsed")
        graph.plot(n, [r["graph_bytes_unrolled"] / 1e6 for r in rows], "s--", markersize=3, color=line.get_color(),
                   label=f"{label}, unrolled")
        depth.plot(n, [r["depth"] for r in rows], "o-", markersize=3, label=label)
    for ax, ylabel in ((macs, "MACs per image (billions)"), (graph, "computational graph (MB)"),
                       (depth, "depth (conv layers on the longest path)")):
        _dress(ax, "output n (iterations)", ylabel, integer_x=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_latency_per_output(latency, path):
    """Latency of output n on LiteRT: `anytime` (loop file) and the app's `encode`+`step` path."""
    fig, (ax,) = _axes()
    for label, row in latency.items():
        n = np.arange(1, len(row["anytime_s"]) + 1)
        line, = ax.plot(n, np.array(row["anytime_s"]) * 1e3, "o-", markersize=3, label=f"{label}: anytime(n)")
        ax.plot(n, np.array(row["step_s"]) * 1e3, "s--", markersize=3, color=line.get_color(),
                label=f"{label}: encode + n x step")
        if row.get("unrolled_s"):
            ax.plot(n, np.array(row["unrolled_s"]) * 1e3, "^:", markersize=3, color=line.get_color(),
                    label=f"{label}: unrolled, n iterations")
    ax.set_ylim(bottom=0)
    _dress(ax, "output n (iterations)", "latency (ms, LiteRT CPU, batch 1)", integer_x=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_metric_over(points, path, xlabel, ylabel):
    """One line per {label: [(x, y), ...]}."""
    fig, (ax,) = _axes()
    for label, xy in points.items():
        x, y = zip(*xy)
        ax.plot(x, y, "o-", markersize=4, label=label)
    _dress(ax, xlabel, ylabel)
    fig.tight_layout()
    save_figure(fig, path)


def plot_search(rows, path):
    """Fig. 6/7: AUC' and peak mIoU of every architecture, shared and independent."""
    fig, (auc, peak) = _axes(2, width=5.0)
    names = sorted({r["architecture"] for r in rows}, key=lambda a: [int(v[1:]) for v in a.split()])
    for offset, variant in ((-0.15, "shared"), (0.15, "independent")):
        group = {r["architecture"]: r for r in rows if r["variant"] == variant}
        x = [i + offset for i, a in enumerate(names) if a in group]
        auc.bar(x, [group[a]["normalized_auc"] for a in names if a in group], width=0.3, label=variant)
        peak.bar(x, [group[a]["miou_peak"] for a in names if a in group], width=0.3, label=variant)
    for ax, ylabel in ((auc, "normalized AUC' of mIoU over MACs"), (peak, "peak mIoU over the outputs")):
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        _dress(ax, "architecture (iterations N, scales L, blocks K)", ylabel)
    fig.tight_layout()
    save_figure(fig, path)
