"""Evaluate an ItNet on a split: mIoU per output, costs, AUC, a plot and a picture strip.

    python -m itnet_keras.evaluate MODEL.keras --data camvid --split val --output DIR

writes `evaluation.json` (`outputs`: per output `output`, `miou`, `iou_per_class`, the split's
`confusion_matrix` (rows: labels, columns: predictions, pixel counts), `macs`, `params`, graph
bytes, `depth`; top-level `auc`, `normalized_auc` and the `chance_miou` they start from: the
paper's 0.00828 for CamVid, else the split's majority-class mIoU), `miou_over_macs.png` and
`predictions.png` (image, label and the prediction of every output for one image).
`--data` and `--scale` default to what the model's run folder recorded (`config.json`
beside the model; see `evaluation_inputs`).
"""

import argparse
import json
import sys
import weakref
import zipfile
from pathlib import Path

from itnet_keras.cli import DATA_DIR_HELP, description, positive
from itnet_keras.console import add_verbose_flag, progress, quiet_startup
from itnet_keras.presets import DATASET_NAMES


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.evaluate", description=description(__doc__))
    parser.add_argument("model", help="a saved .keras model")
    parser.add_argument("--data", choices=DATASET_NAMES,
                        help="default: the one its training recorded, else the one with the model's class count")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--split", default="val", help="val (default), train, or test where the dataset has one")
    parser.add_argument("--scale", type=positive(int),
                        help="downscale images by this factor (default: the training scale recorded beside the model)")
    parser.add_argument("--limit", type=positive(int), help="evaluate only the first LIMIT images")
    parser.add_argument("--batch-size", type=positive(int), default=4,
                        help="images per prediction (default: 4; the mIoU does not depend on it)")
    parser.add_argument("--output", required=True, help="folder for the report")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from itnet_keras.augment import SizeError  # noqa: E402
from itnet_keras.costs import output_costs  # noqa: E402
from itnet_keras.datasets import DatasetError, get_spec, spec_with_classes  # noqa: E402
from itnet_keras.files import output_folder, write_atomic  # noqa: E402
from itnet_keras.metrics import (  # noqa: E402
    anytime_auc, confusion_matrix, iou_from_confusion, majority_class_miou, mean_iou)
from itnet_keras.model import model_args  # noqa: E402  (and registers the custom layers for loading)
from itnet_keras.pipeline import make_dataset  # noqa: E402
from itnet_keras.plots import plot_miou_over_macs, plot_prediction_strip  # noqa: E402


def _class_model(model):
    """`model` with the argmax of every output, built once per model: Keras compiles its
    `predict_on_batch` (one `jax.jit` / `tf.function` per input shape), where calling the
    model eagerly traces its loop again for every batch under JAX."""
    if model not in _CLASS_MODELS:
        _CLASS_MODELS[model] = keras.Model(model.inputs, [ops.argmax(o, axis=-1) for o in model.outputs])
    return _CLASS_MODELS[model]


_CLASS_MODELS = weakref.WeakKeyDictionary()  # model -> its argmax model (not an attribute: Keras would track it)


def predict_classes(model, images, batch_size=None):
    """Per-output argmax class maps [N, batch, H, W], from a compiled prediction.

    With `batch_size`, a smaller batch is padded to it (and the padding dropped), so that a
    split's last batch runs through the same compiled function as the others."""
    images = np.asarray(images)
    count = len(images)
    if batch_size is not None and count < batch_size:
        images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
    outputs = _class_model(model).predict_on_batch(images)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return np.stack([np.asarray(o)[:count] for o in outputs])


def _batch_with_labels(dataset, index):
    """Batch `index` of `dataset` as (images, labels): the labels once, where a multi-output
    dataset repeats them per output."""
    images, labels = dataset[index]
    return images, next(iter(labels.values())) if isinstance(labels, dict) else labels


def split_confusion_matrices(dataset, predict):
    """One confusion matrix per output over the whole split; `predict(images)` returns the
    per-output class maps [N, batch, H, W]. Also returns the input size (h, w)."""
    spec, matrices = dataset.spec, None
    for index in progress(range(len(dataset)), f"{spec.name} {dataset.split.split}", unit="batches"):
        images, labels = _batch_with_labels(dataset, index)
        batch = [confusion_matrix(labels, p, spec.num_classes, spec.ignore_label) for p in predict(images)]
        matrices = batch if matrices is None else [m + b for m, b in zip(matrices, batch)]
    if not matrices[0].sum():  # an mIoU of 0.0 that would mean nothing
        raise ValueError(f"{spec.name} {dataset.split.split}: no labelled pixel in its {len(dataset.split)} images "
                         f"(every label is the ignore value {spec.ignore_label}); Cityscapes withholds its test "
                         "labels: evaluate on val")
    return matrices, tuple(images.shape[1:3])


def evaluate_model(model, dataset, loss_weights=None):
    """Confusion matrices over the whole split, then mIoU per output, costs and AUC.

    `loss_weights` (the normalized training weight of each output), when known, is
    recorded per output: outputs trained with weight 0 are evaluated all the same.
    """
    spec = dataset.spec
    matrices, input_size = split_confusion_matrices(
        dataset, lambda images: predict_classes(model, images, dataset.batch_size))
    costs = output_costs(model, input_size)
    outputs = []
    for cost, matrix in zip(costs, matrices):
        iou = iou_from_confusion(matrix)
        outputs.append({
            **cost, "miou": mean_iou(matrix),
            "iou_per_class": {name: (None if np.isnan(v) else float(v)) for name, v in zip(spec.class_names, iou)},
            "confusion_matrix": matrix.tolist(),
        })
        if loss_weights is not None:
            outputs[-1]["loss_weight"] = float(loss_weights[len(outputs) - 1])
    chance = spec.chance_miou if spec.chance_miou is not None else majority_class_miou(matrices[0])
    auc, normalized = anytime_auc([o["macs"] for o in outputs], [o["miou"] for o in outputs], chance)
    return {"dataset": spec.name, "split": dataset.split.split, "images": len(dataset.split),
            "input_size": list(input_size), "auc": auc, "normalized_auc": normalized, "chance_miou": chance,
            "outputs": outputs}


def write_report(model, dataset, output_dir, label="ItNet", loss_weights=None, source=None, result=None):
    """Evaluate (unless `result`, `evaluate_model`'s of the same model and split, is given) and
    write evaluation.json, miou_over_macs.png and predictions.png.

    `source` (e.g. `{"file": "best.keras", "epoch": 27}`) is recorded as the result's `model`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if result is None:
        result = evaluate_model(model, dataset, loss_weights)
    if source is not None:
        result["model"] = source
    write_atomic(output_dir / "evaluation.json", json.dumps(result, indent=1))
    plot_miou_over_macs({label: result}, output_dir / "miou_over_macs.png")
    images, labels = _batch_with_labels(dataset, 0)
    predictions = predict_classes(model, images, dataset.batch_size)
    plot_prediction_strip(dataset.spec, images[0], labels[0], predictions[:, 0], output_dir / "predictions.png")
    return result


def load_itnet(path):
    """A saved ItNet `.keras` file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a truncated file
        raise ValueError(f"{path} is damaged or not a .keras file (not a readable zip archive; truncated?)")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds here
        raise ValueError(f"cannot load {path} as a Keras model: {error}") from error
    names = [layer.name for layer in model.layers]
    if "iterative_block" not in names or "data_block" not in names:
        raise ValueError(f"{path} is a Keras model but not an ItNet (no data_block/iterative_block layer)")
    return model


def format_outputs(result):
    """A short table of an evaluation: mIoU and MACs per output, then the normalized AUC."""
    lines = ["output    mIoU            MACs"]
    lines += [f"{o['output']:6d}  {o['miou']:.4f}  {o['macs']:14,d}" for o in result["outputs"]]
    return "\n".join(lines + [f"normalized AUC of mIoU over MACs: {result['normalized_auc']:.4f}"])


def training_record(model_path):
    """The `fit` configuration of the run that wrote `model_path` (its folder's
    `config.json`; for a branch, with the record of where it branched under "branch",
    `branch.py`), or None where there is none."""
    path = Path(model_path).with_name("config.json")
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        record = {**saved["fit"], **({"branch": saved["branch"]} if "branch" in saved else {})}
        scale = record.get("scale", 1)
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale {scale!r}, expected a positive integer")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}): it should hold the training "
                         f"configuration of {model_path}") from None
    return record


def training_summary(record):
    """What an evaluation records of the model's training (a `fit` configuration as a dict):
    the augmentation recipe, the output weights and the precision (runs older than the
    `--augment` and `--precision` flags trained with `paper` in float32), and for a branch
    where it branched ("branch": the run, the epoch, the flags changed)."""
    return {"augment": record.get("augment", "paper"), "output_weights": record.get("output_weights"),
            "precision": record.get("precision", "float32"),
            **({"branch": record["branch"]} if record.get("branch") else {})}


def model_dataset(model_path, classes, data=None, record=None):
    """The `DatasetSpec` of the model in `model_path`, which predicts `classes` classes:
    `data` (a --data given), else the dataset of its training `record` (`training_record`),
    else the one dataset with that class count. A `DatasetError` names a dataset unknown or
    of another class count where it came from: the flag, or the run's config.json."""
    config = Path(model_path).with_name("config.json")
    if data:
        spec = get_spec(data)
    elif record and "data" in record:
        try:
            spec = get_spec(record["data"])
        except DatasetError as error:
            raise DatasetError(f"{config}: {error}: pass --data to name the model's dataset") from None
    else:
        spec = spec_with_classes(classes, model_path)
    if spec.num_classes != classes:
        named, remedy = ("", "give the dataset it was trained on") if data else \
            (f"{config} records ", "pass --data to name the model's dataset")  # not a flag never given
        raise DatasetError(f"{named}--data {spec.name}: {spec.num_classes} classes, but {model_path} has "
                           f"{classes}: {remedy}")
    return spec


def evaluation_inputs(model, model_path, data=None, scale=None):
    """(dataset name, scale) to evaluate `model` with: the ones given, else the ones its
    training run recorded, else the dataset with the model's class count at scale 1 (with
    a warning). A dataset whose class count differs from the model's is refused."""
    record = training_record(model_path) or {}
    spec = model_dataset(model_path, model_args(model)["num_classes"], data, record)
    trained = record.get("scale")
    if scale is None and trained is None:
        print(f"warning: {model_path} has no config.json beside it that records its training scale; "
              "evaluating at --scale 1 (pass --scale as in training)", file=sys.stderr)
    elif scale is not None and trained is not None and scale != trained:
        print(f"warning: --scale {scale} differs from the scale {model_path} was trained at ({trained}, "
              "recorded in config.json beside it)", file=sys.stderr)
    return spec.name, scale or trained or 1


def data_that_fits(model_path, flags, make):
    """`make()`, the model's data; a size it does not fit (`SizeError`) of an argument in
    `flags` (argument name -> the flag's value, None where not given) is named where its value
    came from: the flag, else the run's config.json beside the model, else the default."""
    try:
        return make()
    except SizeError as error:
        if error.argument not in flags:
            raise
        given, recorded = flags[error.argument], (training_record(model_path) or {}).get(error.argument)
        config = Path(model_path).with_name("config.json")
        if error.argument == "batch_size":  # the message names the value, not where it came from
            source = (f"--batch-size {given}" if given is not None else
                      f"{config} records batch_size {recorded}" if recorded is not None else "the default batch size")
            raise ValueError(f"{source}: {error}") from None
        # a scale's or crop's message begins with its name and value: "scale 7 for ..."
        source = "--" if given is not None else f"{config} records " if recorded is not None else "the default "
        raise ValueError(source + str(error)) from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose)
    try:
        model = load_itnet(args.model)
        data, scale = evaluation_inputs(model, args.model, args.data, args.scale)
        dataset = data_that_fits(args.model, {"scale": args.scale}, lambda: make_dataset(
            data, args.split, data_dir=args.data_dir, batch_size=args.batch_size, scale=scale, limit=args.limit))
        record = training_record(args.model)
        source = {"file": str(args.model), **(training_summary(record) if record else {})}
        with output_folder(args.output) as folder:  # before the evaluation
            result = evaluate_model(model, dataset)
            try:
                write_report(model, dataset, folder, source=source, result=result)
            except OSError as error:
                raise OSError(f"--output {folder}: cannot write there ({error.strerror or error})") from None
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_outputs(result))
    print(f"report in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
