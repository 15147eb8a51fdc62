"""mIoU per output of an exported `.tflite` file on a dataset split, run with LiteRT."""

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.evaluate import split_confusion_matrices
from itnet_keras.metrics import mean_iou


def tflite_mious(path, dataset, threads=2):
    """mIoU of each output (`outputs` signature, one image at a time) over the split."""
    run = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner("outputs")

    def predict(images):
        results = [run(image=image[None]) for image in images]
        names = sorted(results[0], key=lambda name: int(name.rsplit("_", 1)[1]))
        return np.stack([np.concatenate([r[n] for r in results]).argmax(-1) for n in names])

    matrices, _ = split_confusion_matrices(dataset, predict)
    return [mean_iou(m) for m in matrices]
