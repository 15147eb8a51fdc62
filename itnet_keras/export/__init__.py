"""Export of a trained ItNet: TFLite (LiteRT) and ONNX files that keep the loop a loop.

- `signatures`: the functions an app calls (`outputs`, `anytime`, `encode`, `step`,
  `upsample`, `finish`) and the SavedModel that holds them.
- `tflite`: conversion in four quantization modes and its checks; the `loop` flavour and
  the `static` one.
- `static`: the static flavour (output n, one subgraph, no control flow).
- `camera_input`: camera bytes in (`--input-type uint8`, and `int8` for int8 files), for both flavours.
- `tflite_metadata`: TFLite Model Metadata inside each file (MediaPipe's writer).
- `int8_loop`: makes the `WHILE` of an int8 file carry int8 tensors.
- `flatbuffer`: reads a `.tflite` file (ops per subgraph, buffers, loop dtypes) to prove the checks.
- `onnx`: conversion with tf2onnx (a `Loop` op) and its checks.
- `artifacts`: what both formats share: `ExportError`, the destination check, the sidecar
  metadata and the writing of a file with its sidecar.
- `measure/`: measurements of exported files (`accuracy`, `latency`, `parts`, `memory`, `anytime_device`).

The command-line entry points live in the repository's `export/` folder. The closed sets
of choices below live here, not in the modules that use them, so that the scripts list
them in `--help` before TensorFlow is imported.
"""

import importlib.util

QUANT_MODES = ("float32", "float16", "dynamic", "int8")  # of `tflite.convert_tflite`
FLAVORS = ("loop", "static")  # `tflite.convert_tflite` and `tflite.convert_static`
INPUT_TYPES = ("float32", "uint8", "int8")  # the image an app passes (`camera_input`)
EVALUATED_SIGNATURES = ("outputs", "anytime", "finish")  # how `measure.accuracy.exported_mious` computes output n
CALIBRATION_IMAGES = 64  # int8 calibration's training images (`tflite.calibration_sample`; export/README.md)


def _tensorflow_installed():
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ImportError:
        return False


if not _tensorflow_installed():  # training and evaluation run without it; export does not
    raise ImportError("itnet_keras.export needs TensorFlow (TFLite and ONNX conversion run through it), "
                      'which is not installed: pip install -e ".[export]"')
