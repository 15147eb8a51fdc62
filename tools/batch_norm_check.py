"""CamVid val mIoU of outputs 1, 8 and 16 with the batch norms' moving statistics (inference)
and with each batch's own statistics: a large gap means the moving averages lag the weights.
`python -m itnet_keras.recalibrate` re-estimates them (docs/training.md).

    python tools/batch_norm_check.py MODEL.keras CAMVID_DIR
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itnet_keras.cli import description  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(prog="python tools/batch_norm_check.py", description=description(__doc__))
    parser.add_argument("model", help="a trained CamVid .keras ItNet with 16 outputs")
    parser.add_argument("data_dir", help="the CamVid folder (SegNet layout)")
    return parser


if __name__ == "__main__":  # --help and flag errors answer before the imports below
    ARGS = build_parser().parse_args()

import numpy as np  # noqa: E402

from itnet_keras.evaluate import load_itnet  # noqa: E402
from itnet_keras.metrics import confusion_matrix, mean_iou  # noqa: E402
from itnet_keras.pipeline import make_dataset  # noqa: E402


def main(model_path, data_dir):
    model = load_itnet(model_path)
    val = make_dataset("camvid", "val", data_dir=data_dir, batch_size=8)
    for training in (False, True):
        matrices = [0, 0, 0]
        for i in range(len(val)):
            images, labels = val[i]
            outputs = model(images, training=training)  # training=True also moves this copy's statistics
            matrices = [cm + confusion_matrix(np.asarray(labels), np.argmax(np.asarray(outputs[n]), -1), 11, 11)
                        for cm, n in zip(matrices, (0, 7, 15))]
        what = "each batch's statistics" if training else "moving statistics"
        print(what, [round(float(mean_iou(cm)), 3) for cm in matrices])


if __name__ == "__main__":
    main(ARGS.model, ARGS.data_dir)
