"""Export of a trained ItNet: TFLite (LiteRT) and ONNX files that keep the loop a loop.

- `signatures`: the functions an app calls (`outputs`, `anytime`, `encode`, `step`)
  and the SavedModel that holds them.
- `tflite`: conversion in four quantization modes, the sidecar metadata, checks.
- `flatbuffer`: reads a `.tflite` file (ops per subgraph, buffers) to prove the checks.
- `onnx`: conversion with tf2onnx (a `Loop` op) and its checks.

The command-line entry points live in the repository's `export/` folder.
"""
