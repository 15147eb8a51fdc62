"""mIoU per output of an exported `.tflite` file on a dataset split, run with LiteRT."""

from ai_edge_litert.interpreter import Interpreter

from itnet_keras.metrics import confusion_matrix, mean_iou


def tflite_mious(path, dataset, threads=2):
    """mIoU of each output (`outputs` signature, one image at a time) over the split."""
    run = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner("outputs")
    spec, matrices = dataset.spec, None
    for index in range(len(dataset)):
        images, labels = dataset[index]
        labels = next(iter(labels.values())) if isinstance(labels, dict) else labels
        for image, label in zip(images, labels):
            result = run(image=image[None])
            names = sorted(result, key=lambda name: int(name.rsplit("_", 1)[1]))
            batch = [confusion_matrix(label, result[n][0].argmax(-1), spec.num_classes, spec.ignore_label)
                     for n in names]
            matrices = batch if matrices is None else [m + b for m, b in zip(matrices, batch)]
    return [mean_iou(m) for m in matrices]
