"""Segment one's own images with a trained ItNet: `python -m itnet_keras.predict MODEL IMAGES...`.

    python -m itnet_keras.predict runs/itnet/best.keras photos/ --output masks
    python -m itnet_keras.predict itnet.tflite 'photos/*.jpg' --deadline-ms 20 --output masks --raw

MODEL is a `.keras` file (each image scaled to the pixel count the model was trained at,
keeping its aspect ratio, or to `--input-size`) or a `.tflite` file
from `export/convert.py` (its `anytime` signature, at the file's input size: other images
are resized, and the command says so). IMAGES are files, folders (their images) or glob
patterns. Output n = `--iterations n`, or with `--deadline-ms T` the largest n whose time,
measured here on the first image of each input size, fits T (the anytime policy); default:
the last output. For each image NAME the output folder receives `NAME_mask.png` (classes
in colour), `NAME_overlay.png` (the mask over the image) and, with `--raw`,
`NAME_classes.png` (class ids, 8-bit); `predictions.json` lists what was done per image.
Masks have each image's own size.
"""

import argparse
import glob
import io
import json
import statistics
import sys
import time
from pathlib import Path

from itnet_keras.console import add_verbose_flag, progress, quiet_startup
from itnet_keras.cli import description, parse_size, positive
from itnet_keras.presets import DATASET_NAMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.predict", description=description(__doc__))
    parser.add_argument("model", help="a trained ItNet: .keras, or .tflite from export/convert.py")
    parser.add_argument("images", nargs="+", help="image files, folders of images, or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the masks")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="output n: run n iterations (default: all N)")
    budget.add_argument("--deadline-ms", type=positive(float),
                        help="run the most iterations whose time, measured here, fits this many milliseconds")
    parser.add_argument("--raw", action="store_true", help="also write the class ids (NAME_classes.png)")
    parser.add_argument("--input-size", type=parse_size,
                        help="HEIGHTxWIDTH to resize .keras inputs to (default: each image scaled to the "
                             "pixel count of the model's training images, aspect ratio kept)")
    parser.add_argument("--data", choices=DATASET_NAMES,
                        help="the dataset the .keras model was trained on (normalization and class names; a .tflite "
                             "file's sidecar .json records it; "
                             "default: the run folder's config.json, else the dataset with the model's class count)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose, modules=("keras", "ai_edge_litert.interpreter"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from itnet_keras.image_files import DatasetError, read_image  # noqa: E402
from itnet_keras.files import output_folder, write_atomic  # noqa: E402
from itnet_keras.plots import class_colors  # noqa: E402
from itnet_keras.predictors import PredictError, TFLitePredictor, open_model  # noqa: E402


# -- inputs --------------------------------------------------------------------------


def find_images(patterns):
    """Image paths from files, folders (their images, sorted) and glob patterns, in order."""
    paths, known = [], set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"folder {pattern} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                raise PredictError(f"pattern {pattern!r} matches no files")
        else:
            raise PredictError(f"image {pattern} does not exist")
        for file in found:
            if file.resolve() not in known:  # the same file once, however it is spelled
                known.add(file.resolve())
                paths.append(file)
    stems = {}
    for path in paths:
        if path.stem in stems:
            raise PredictError(f"{stems[path.stem]} and {path} would write the same masks ({path.stem}_mask.png): "
                               "predict them into different --output folders")
        stems[path.stem] = path
    return paths


def load_image(path):
    """uint8 RGB [H, W, 3], upright as its EXIF orientation says (a phone's portrait photo);
    PredictError naming the file if it cannot be read."""
    try:
        return read_image(path, Path(path).parent, upright=True)  # named from its folder on
    except DatasetError as error:
        raise PredictError(str(error)) from None


def resize(array, size, nearest=False):
    """An image [H, W, 3] or a class map [H, W] resized to `size` (h, w)."""
    if array.shape[:2] == tuple(size):
        return array
    interpolation = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR  # both sample at pixel centres
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


# -- the anytime policy ----------------------------------------------------------------


def time_outputs(predictor, image, deadline_ms, repeats=3):
    """{n: median ms of output n on `image`} for n = 1, 2, ... up to the first n that
    misses `deadline_ms` (later outputs take longer still) or N."""
    times = {}
    for n in range(1, predictor.num_iterations + 1):
        predictor.logits(image, n)  # warm-up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.logits(image, n)
            samples.append(1e3 * (time.perf_counter() - start))
        times[n] = statistics.median(samples)
        if times[n] > deadline_ms:
            break
    return times


def iterations_for_deadline(times, deadline_ms, where=""):
    """The largest n whose measured time fits the deadline; PredictError if none does
    (`where`: the input size and image it was measured on, for the message)."""
    fitting = [n for n, ms in times.items() if ms <= deadline_ms]
    if not fitting:
        raise PredictError(f"--deadline-ms {deadline_ms:g}: output 1 alone takes {times[1]:.1f} ms on this machine"
                           + (f" {where}" if where else ""))
    return max(fitting)


def plan_iterations(args, sizes, predictor):
    """{input size: (n, {n: measured ms} or None)} for every size the images run at (`sizes`:
    {path: size}): `--iterations`, else all N, else with `--deadline-ms` the n measured to fit
    it on the first image of that size. All before any mask is written: a deadline that no
    output meets stops the command with nothing written."""
    budgets = {}
    for path, size in sizes.items():
        if size in budgets:
            continue
        if args.deadline_ms is None:
            budgets[size] = (args.iterations or predictor.num_iterations, None)
            continue
        times = time_outputs(predictor, resize(load_image(path), size)[None], args.deadline_ms)
        where = f"at {size[0]}x{size[1]} (height x width, measured on {path})"
        budgets[size] = (iterations_for_deadline(times, args.deadline_ms, where), times)
    return budgets


# -- writing -------------------------------------------------------------------------


def write_png(path, array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue(), "wb")


def write_masks(folder, name, image, classes, colors, raw):
    mask = colors[classes]
    overlay = (0.5 * image + 0.5 * mask).astype(np.uint8)
    written = [f"{name}_mask.png", f"{name}_overlay.png"] + ([f"{name}_classes.png"] if raw else [])
    for file, array in zip(written, (mask, overlay, classes.astype(np.uint8))):
        write_png(folder / file, array)
    return written


def predict_images(args, sizes, budgets, predictor, folder):
    """Masks of every image (`sizes`: {path: input size}, `budgets`: `plan_iterations`') into
    `folder`; returns the summary written to `predictions.json`."""
    colors = class_colors(predictor.spec)
    resized, images = {}, []
    for path, size in progress(sizes.items(), "predict", unit="images"):
        image = load_image(path)
        if size != image.shape[:2] and isinstance(predictor, TFLitePredictor):
            resized.setdefault(image.shape[:2], []).append(path.name)
        n = budgets[size][0]
        classes = resize(predictor.logits(resize(image, size)[None], n)[0].argmax(-1).astype(np.uint8),
                         image.shape[:2], nearest=True)
        files = write_masks(folder, path.stem, image, classes, colors, args.raw)
        images.append({"image": str(path), "size": list(image.shape[:2]), "input_size": list(size),
                       "iterations": n, "files": files})
    for (height, width), names in resized.items():
        file_height, file_width = predictor.file_size
        print(f"note: {len(names)} image(s) of {height}x{width} ({names[0]}{', ...' if len(names) > 1 else ''}) "
              f"resized to {file_height}x{file_width} (height x width), the only size {Path(args.model).name} "
              "takes; their masks are resized back", file=sys.stderr)
    summary = {
        "model": str(args.model), "dataset": predictor.spec.name, "classes": list(predictor.spec.class_names),
        "colors": colors.tolist(), "deadline_ms": args.deadline_ms,
        "deadline": {f"{s[0]}x{s[1]}": {"measured_ms": times, "iterations": n}
                     for s, (n, times) in budgets.items() if times is not None},
        "images": images,
    }
    write_atomic(folder / "predictions.json", json.dumps(summary, indent=1))
    return summary


def run(args):
    """Check the images, the model and the flags, then predict every image into `--output`;
    returns the summary written to `predictions.json`."""
    paths = find_images(args.images)
    shapes = {path: load_image(path).shape[:2] for path in paths}  # every image readable before any work
    predictor = open_model(args.model, args.data, args.input_size)
    sizes = {path: tuple(predictor.size_for(shape)) for path, shape in shapes.items()}
    for path, size in sizes.items():  # every image large enough for the model
        height, width = shapes[path]
        if min(size) < 8:
            raise PredictError(f"image {path} ({height}x{width}, height x width) runs at {size[0]}x{size[1]}, scaled "
                               "to the training images' pixel count: expected at least 8x8 (pass --input-size)")
    n_max = predictor.num_iterations
    if args.iterations is not None and not 1 <= args.iterations <= n_max:
        raise PredictError(f"--iterations {args.iterations}: {args.model} has outputs 1..{n_max}")
    for warning in predictor.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    budgets = plan_iterations(args, sizes, predictor)
    with output_folder(Path(args.output)) as folder:
        return predict_images(args, sizes, budgets, predictor, folder)


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_startup(args.verbose, modules=("keras", "ai_edge_litert.interpreter"))
    try:
        summary = run(args)
    except (PredictError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for size, choice in summary["deadline"].items():
        print(f"{size}: " + ", ".join(f"output {n} {ms:.2f} ms" for n, ms in choice["measured_ms"].items())
              + f"; deadline {args.deadline_ms:g} ms -> output {choice['iterations']}")
    counts = sorted({i["iterations"] for i in summary["images"]})
    print(f"{len(summary['images'])} image(s) through output {', '.join(map(str, counts))}; masks in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
