"""mIoU per output of an exported file (`.tflite` with LiteRT, `.onnx` with onnxruntime)
on a dataset split, one image at a time: through its `outputs` function, or (`.tflite`)
through the paths an app takes to output n: `anytime(image, n)`, or `encode`, n - 1
`step` calls and `finish`. A static file (one signature `output_n`) has output n only; a
uint8 or int8 input gets the split's images as camera bytes."""

from pathlib import Path

import numpy as np
import onnxruntime
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.console import quietly
from itnet_keras.evaluate import split_confusion_matrices
from itnet_keras.export import EVALUATED_SIGNATURES
from itnet_keras.export.camera_input import image_for
from itnet_keras.export.flatbuffer import iterations_of, load, signature_subgraphs
from itnet_keras.metrics import mean_iou


def _outputs_function(path, threads, normalization):
    """image [1, H, W, 3] -> {output_n: logits}, for a `.tflite` or an `.onnx` file."""
    if Path(path).suffix == ".onnx":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda image: dict(zip(names, session.run(None, {"image": image})))
    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner("outputs")
    given = image_for(runner, normalization)
    return lambda image: runner(image=given(image))


def _app_function(path, threads, signature, normalization):
    """image [1, H, W, 3] -> {output_n: logits}, every output n computed as an app computes
    it alone: `anytime(image, n)`, or (`finish`) `finish(state after n - 1 steps, n)`."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    run = {name: interpreter.get_signature_runner(name) for name in ("anytime", "encode", "step", "finish")}
    count = iterations_of(path)
    given = image_for(run["anytime"], normalization)

    def outputs(image):
        image = given(image)
        if signature == "anytime":
            return {f"output_{n}": run["anytime"](image=image, iterations=np.int32(n))["logits"]
                    for n in range(1, count + 1)}
        result, state = {}, run["encode"](image=image)
        for n in range(1, count + 1):
            result[f"output_{n}"] = run["finish"](**state, n=np.int32(n))["logits"]
            if n < count:
                state = {k: v for k, v in run["step"](**state, n=np.int32(n)).items() if k.startswith("state_")}
        return result

    return outputs


def static_output(path):
    """n of a static file (its one signature `output_n`), else None."""
    keys = list(signature_subgraphs(load(path)))
    if len(keys) == 1 and keys[0].startswith("output_") and keys[0][len("output_"):].isdigit():
        return int(keys[0][len("output_"):])
    return None


def _static_function(path, threads, normalization):
    """image [1, H, W, 3] (normalized) -> {output_n: logits} of a static file."""
    n = static_output(path)
    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner(f"output_{n}")
    given = image_for(runner, normalization)

    def outputs(image):
        return {f"output_{n}": runner(image=given(image))["logits"]}

    return outputs


def file_input_size(path):
    """(height, width) of the image input of a `.tflite` (of its `outputs` signature, or of a
    static file's one signature) or `.onnx` file."""
    if Path(path).suffix == ".onnx":
        shape = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    else:
        n = static_output(path)
        runner = Interpreter(model_path=str(path)).get_signature_runner("outputs" if n is None else f"output_{n}")
        shape = runner.get_input_details()["image"]["shape"]
    return int(shape[1]), int(shape[2])


def check_signature(path, signature):
    """Raise ValueError unless `signature` is one of `EVALUATED_SIGNATURES` that the file has."""
    if signature not in EVALUATED_SIGNATURES:
        raise ValueError(f"--signature {signature!r}: not one of {EVALUATED_SIGNATURES}")
    if signature != "outputs" and Path(path).suffix == ".onnx":
        raise ValueError(f"--signature {signature}: {path} is an ONNX file, which has the `outputs` signature only "
                         "(measure it in a run of its own)")


def exported_mious(path, dataset, threads=2, signature="outputs"):
    """mIoU of each output of the exported file over the split, through `signature` (one of
    `EVALUATED_SIGNATURES`; `.onnx` files have `outputs` only); of a static file, [None] *
    (n - 1) + [mIoU of output n]."""
    check_signature(path, signature)
    n = static_output(path) if Path(path).suffix == ".tflite" else None
    normalization = dataset.split.spec.normalization
    if n is not None:
        run = _static_function(path, threads, normalization)
    elif signature == "outputs":
        run = _outputs_function(path, threads, normalization)
    else:
        run = _app_function(path, threads, signature, normalization)

    def predict(images):
        results = [run(image[None]) for image in images]
        names = sorted(results[0], key=lambda name: int(name.rsplit("_", 1)[1]))
        return np.stack([np.concatenate([r[n] for r in results]).argmax(-1) for n in names])

    with quietly():  # LiteRT announces its CPU delegate at the first call
        matrices, _ = split_confusion_matrices(dataset, predict)
    return [mean_iou(m) for m in matrices] if n is None else [None] * (n - 1) + [mean_iou(matrices[0])]
