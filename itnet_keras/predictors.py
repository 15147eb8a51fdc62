"""The two kinds of model `python -m itnet_keras.predict` runs, behind one interface:
`num_iterations`, `spec` (the dataset), `warnings`, `size_for(image_size)` (the input size an
image runs at) and `logits(pixels [1, H, W, 3] uint8, n)` (output n)."""

import json
import math
from pathlib import Path

import keras
import numpy as np

from itnet_keras.augment import input_size as dataset_input_size, normalize
from itnet_keras.console import quietly
from itnet_keras.datasets import DATASETS
from itnet_keras.evaluate import load_itnet, model_dataset, training_record
from itnet_keras.model import anytime, model_args


class PredictError(ValueError):
    """An input or flag is wrong; the message names it."""


def _known(dataset, path, remedy):
    """`dataset`, recorded in `path`, if it is one of ours; else a `PredictError`."""
    if dataset not in DATASETS:
        raise PredictError(f"{path}: unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)}): {remedy}")
    return dataset


def compiled_anytime(model):
    """`(images, n) -> logits of output n`, compiled once per image shape on TensorFlow
    (`tf.function`) and JAX (`jax.jit`): n is a run-time int32, so one compilation serves
    every n (a model built with `unroll=True` takes n as a Python int: one per n). Eager on
    other backends. Eager calls are several times slower (and JAX would trace the loop at
    every call): `--deadline-ms` would choose too few iterations."""
    def run(images, n):
        return anytime(model, images, n)

    backend = keras.backend.backend()
    dynamic = not model_args(model)["unroll"]
    if backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(run, reduce_retracing=True)
    elif backend == "jax":
        import jax

        run = jax.jit(run, static_argnums=() if dynamic else (1,))
    else:
        return run
    return (lambda images, n: run(images, np.int32(n))) if dynamic else run


class KerasPredictor:
    """A `.keras` ItNet: `logits(pixels [1, H, W, 3] uint8, n)` through `itnet_keras.anytime`;
    `warnings` says what the user should know (`run` prints them)."""

    def __init__(self, path, data=None, input_size=None):
        self.model = load_itnet(path)
        self._anytime = compiled_anytime(self.model)
        args = model_args(self.model)
        self.num_iterations, self.input_size = args["num_iterations"], input_size
        # The run's config.json, if the model has one beside it: its dataset and scale,
        # unless --data and --input-size make it unneeded.
        record = None if data and input_size else training_record(path)
        self.spec = model_dataset(path, args["num_classes"], data, record)
        self.training_size = dataset_input_size(self.spec, (record or {}).get("scale") or 1)
        self.warnings = []
        if record is None and input_size is None:
            height, width = self.training_size
            self.warnings.append(f"{path} has no config.json beside it that records its training scale; running "
                                 f"at the pixel count of {self.spec.name} at scale 1 ({height}x{width}; pass "
                                 "--input-size as in training)")

    def size_for(self, image_size):
        """`--input-size`, else the image's size scaled to the training images' pixel count:
        objects then appear about as large as the model learnt them (a 720x960 CamVid frame
        runs at 360x480, a 1080x1920 one at 312x554)."""
        if self.input_size:
            return self.input_size
        factor = math.sqrt(math.prod(self.training_size) / math.prod(image_size))
        return tuple(round(side * factor) for side in image_size)

    def logits(self, pixels, n):
        return np.asarray(self._anytime(normalize(pixels, self.spec), n))


class TFLitePredictor:
    """A `.tflite` file's `anytime` signature (LiteRT); its sidecar `.json` gives the
    normalization and class names, the file its input size and type: normalized float32,
    or the pixels themselves (`--input-type uint8`, or int8: the bytes minus 128)."""

    warnings = ()

    def __init__(self, path, input_size=None, data=None):
        try:
            from ai_edge_litert.interpreter import Interpreter  # lazy: LiteRT is the optional `export` extra
        except ImportError as error:
            raise PredictError(f"{path}: a .tflite file runs on LiteRT, which is not installed ({error}): "
                               'pip install -e ".[export]" (or pip install ai-edge-litert)') from None

        meta_path = Path(path).with_suffix(".json")
        if not meta_path.is_file():
            raise PredictError(f"{meta_path} not found: export/convert.py writes it beside {Path(path).name} "
                               "(the normalization and class names)")
        remedy = f"export/convert.py writes it again beside {Path(path).name}"
        try:
            meta = json.loads(meta_path.read_text())
            dataset, self.num_iterations = meta["dataset"], meta["num_iterations"]
        except (ValueError, KeyError, TypeError) as error:
            raise PredictError(f"{meta_path} is damaged ({type(error).__name__}: {error}): {remedy}") from None
        self.spec = DATASETS[_known(dataset, meta_path, remedy)]
        if data is not None and data != dataset:
            raise PredictError(f"--data {data}: {Path(path).name} was exported for {dataset} ({meta_path.name} "
                               "records it, with its normalization and class names): leave --data out")
        try:
            with quietly():  # LiteRT announces its CPU delegate when it allocates
                interpreter = Interpreter(model_path=str(path))
                interpreter.allocate_tensors()
        except Exception as error:  # LiteRT raises ValueError or RuntimeError
            raise PredictError(f"cannot load {path} as an ItNet .tflite file: {error}") from None
        signatures = sorted(interpreter.get_signature_list())
        if "anytime" not in signatures:
            if "outputs" in signatures:  # the loop flavour of a model built with unroll=True
                remedy = "its model was built with unroll=True (for measurements); export one built without it"
            else:
                static = len(signatures) == 1 and signatures[0].startswith("output_")
                remedy = (("a static-flavour file, of one output; " if static else "")
                          + "predict runs the loop flavour, `python export/convert.py MODEL.keras --flavor loop`")
            raise PredictError(f"{path} has no `anytime` signature, only {', '.join(signatures) or 'none'}: {remedy}")
        self.run = interpreter.get_signature_runner("anytime")
        image = self.run.get_input_details()["image"]
        self.file_size, self.input_dtype = tuple(int(d) for d in image["shape"][1:3]), image["dtype"]
        if input_size is not None and tuple(input_size) != self.file_size:
            raise PredictError(f"--input-size {input_size[0]}x{input_size[1]}: {Path(path).name} takes "
                               f"{self.file_size[0]}x{self.file_size[1]} images only (export it again with "
                               f"--input-size)")

    def size_for(self, image_size):
        return self.file_size

    def logits(self, pixels, n):
        if self.input_dtype == np.float32:
            image = normalize(pixels, self.spec)
        else:  # camera bytes, minus 128 for an int8 input (`export.camera_input`, which needs TensorFlow)
            image = pixels if self.input_dtype == np.uint8 else (pixels ^ np.uint8(0x80)).view(np.int8)
        return self.run(image=image, iterations=np.int32(n))["logits"]


def open_model(path, data=None, input_size=None):
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"model file {path} does not exist")
    if path.suffix == ".tflite":
        return TFLitePredictor(path, input_size, data)
    if path.suffix == ".keras":
        return KerasPredictor(path, data, input_size)
    raise PredictError(f"model {path}: expected a .keras or a .tflite file")
