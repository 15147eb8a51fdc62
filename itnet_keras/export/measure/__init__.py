"""Measurements of exported files (conversion lives one level up, in `itnet_keras.export`).

- `accuracy`: mIoU per output of a `.tflite` or `.onnx` file on a dataset split.
- `latency`: LiteRT latency per output n (loop, app-driven, unrolled, static; per mode).
- `memory`: file, weight and activation bytes of a `.tflite` file.
- `anytime_device`: an app's `encode`/`step` loop with stopping policies.
"""
