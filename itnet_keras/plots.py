"""The evaluation's figures: mIoU over MACs beside the published points, the class colours
and the strip of one image's predictions. Each is saved atomically."""

import numpy as np

from itnet_keras.files import pyplot, save_figure

# Published CamVid points for the mIoU-over-MACs plot: (label, mIoU, MACs per 480x360 image
# or None where no count at that size is published, split). Sources: docs/training.md.
REFERENCE_SIZE = (360, 480)
REFERENCES = {
    "camvid": (
        ("ItNet paper, shared f=51", 0.728, 6.2e9, "val"),
        ("ENet", 0.513, None, "test"),
        ("ESPNet", 0.556, None, "test"),
        ("CGNet", 0.656, None, "test"),
    ),
}


def reference_marks(result):
    """The published points to draw beside `result` (an evaluation), as (label, MACs in
    billions or None, mIoU, why it is off the MACs axis or None): placed on the MACs axis only
    where the count is published and `result` is at the references' 480x360."""
    same_size = tuple(result["input_size"]) == REFERENCE_SIZE
    marks = []
    for name, miou, macs, split in REFERENCES.get(result["dataset"], ()):
        if macs is None:
            marks.append((f"{name} ({split})", None, miou, "no published MACs at 480x360"))
        elif not same_size:
            marks.append((f"{name} ({split})", None, miou, f"{macs / 1e9:.1f}e9 MACs at 480x360"))
        else:
            marks.append((f"{name} ({split})", macs / 1e9, miou, None))
    return marks


def plot_miou_over_macs(results, path, title=None):
    """mIoU over MACs, one curve per {label: evaluation result} (the paper's anytime plots),
    with the published points of the dataset (`reference_marks`). Returns the legend's labels.

    Outputs trained with loss weight 0 are drawn hollow.
    """
    fig, ax = pyplot().subplots(figsize=(5.5, 3.8))
    hollow_label = "outputs with loss weight 0"
    for label, result in results.items():
        macs = [o["macs"] / 1e9 for o in result["outputs"]]
        miou = [o["miou"] for o in result["outputs"]]
        line, = ax.plot(macs, miou, "o-", markersize=4, label=f"{label} (AUC' {result['normalized_auc']:.3f})")
        untrained = [i for i, o in enumerate(result["outputs"]) if o.get("loss_weight", 1) == 0]
        if untrained:
            ax.plot([macs[i] for i in untrained], [miou[i] for i in untrained], "o", markersize=4, color="white",
                    markeredgecolor=line.get_color(), label=hollow_label)
            hollow_label = None
    any_result = next(iter(results.values()))
    for (label, macs, miou, note), marker in zip(reference_marks(any_result), "*sD^v"):
        if macs is None:
            ax.axhline(miou, color="gray", linestyle=":", linewidth=0.8)
            ax.annotate(f"{label}: {note}", (0, miou), xycoords=("axes fraction", "data"),
                        xytext=(3, 2), textcoords="offset points", fontsize=6, color="dimgray")
        else:
            ax.plot([macs], [miou], marker, color="black", markersize=7, linestyle="none", label=label)
    height, width = any_result["input_size"]
    ax.set_xlabel(f"multiply-accumulates per {width}x{height} image (billions)")
    ax.set_ylabel(f"mIoU ({any_result['dataset']} {any_result['split']})")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    labels = [text.get_text() for text in legend.get_texts()]
    save_figure(fig, path)
    return labels


def class_colors(spec):
    """uint8 RGB [num_classes, 3]: the colour of each class of `spec` in masks and picture
    strips, the dataset's own palette (`DatasetSpec.colors`)."""
    return np.asarray(spec.colors, np.uint8)


def plot_prediction_strip(spec, image, label, predictions, path):
    """One image (normalized as `spec` says), its label and the class map of every output
    (`predictions` [N, H, W]) in a row: the paper's Fig. 1e."""
    plt = pyplot()
    colors = class_colors(spec)
    scale, offset = spec.normalization

    def colorize(classes):
        rgb = colors[np.clip(classes, 0, spec.num_classes - 1)]
        rgb[classes == spec.ignore_label] = 0
        return rgb

    panels = [("image", np.clip((image - offset) / scale / 255, 0, 1)), ("label", colorize(label))]
    panels += [(f"output {n}", colorize(p)) for n, p in enumerate(predictions, start=1)]
    columns = min(len(panels), 6)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, picture) in zip(axes.flat, panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
