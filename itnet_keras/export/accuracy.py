"""mIoU per output of an exported file (`.tflite` with LiteRT, `.onnx` with onnxruntime)
on a dataset split, one image at a time through its `outputs` function."""

from pathlib import Path

import numpy as np

from itnet_keras.evaluate import split_confusion_matrices
from itnet_keras.metrics import mean_iou


def _outputs_function(path, threads):
    """image [1, H, W, 3] -> {output_n: logits}, for a `.tflite` or an `.onnx` file."""
    if Path(path).suffix == ".onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda image: dict(zip(names, session.run(None, {"image": image})))
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner("outputs")
    return lambda image: runner(image=image)


def exported_mious(path, dataset, threads=2):
    """mIoU of each output of the exported file over the split."""
    run = _outputs_function(path, threads)

    def predict(images):
        results = [run(image[None]) for image in images]
        names = sorted(results[0], key=lambda name: int(name.rsplit("_", 1)[1]))
        return np.stack([np.concatenate([r[n] for r in results]).argmax(-1) for n in names])

    matrices, _ = split_confusion_matrices(dataset, predict)
    return [mean_iou(m) for m in matrices]
