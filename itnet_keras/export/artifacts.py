"""What every exported file shares, TFLite or ONNX: the error an export raises, the check
that its destination is writable, and the sidecar metadata written beside it."""

import json
import numbers
import tempfile
from pathlib import Path

import numpy as np

from itnet_keras.export.int8_loop import INT8_LOGITS_SIGNATURES
from itnet_keras.export.static import signature_key
from itnet_keras.export.signatures import signatures_of, state_shapes
from itnet_keras.files import write_atomic
from itnet_keras.model import model_args


class ExportError(ValueError):
    """The export cannot go on; the message names the file, flag or op at fault."""


def writable_destination(path, sidecar_format=None, output=None):
    """Raise ExportError (naming `path`, and `output`, the --output given, where that differs:
    a static file of output n) unless a file can be written there, and with a
    `sidecar_format` ("tflite", "onnx") its sidecar `path.with_suffix(".json")` too. Checked
    before converting, so that a failed export leaves nothing behind. An existing sidecar is
    overwritten only if it is one of the same format: `itnet.json` of `itnet.tflite` is not
    the sidecar of `itnet.onnx`, and a JSON file of one's own is not a sidecar at all."""
    path = Path(path)
    flag = f"--output {path}" if output is None or Path(output) == path else f"--output {output} ({path.name})"
    targets = [path] + ([path.with_suffix(".json")] if sidecar_format else [])
    for target in targets:
        if target.is_dir():
            raise ExportError(f"{flag}: {target} is a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as error:
        raise ExportError(f"{flag}: cannot write there ({error.strerror or error})") from None
    sidecar = targets[-1]
    if sidecar_format and sidecar.is_file():
        try:
            found = json.loads(sidecar.read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != sidecar_format:
            owner = f"the sidecar of a .{found} file" if found in ("tflite", "onnx") else "not a sidecar of ours"
            raise ExportError(f"{flag}: {sidecar}, where its metadata would go, is {owner}; "
                              "choose another --output name (or remove that file)")


def export_size(spec, input_size):
    """The (height, width) an export takes: `input_size`, or else the dataset `spec`'s image
    size; ExportError when a library call gives neither."""
    if input_size is None and spec is None:
        raise ExportError("an export needs an input size: pass input_size=(height, width) or spec (--data)")
    size = spec.image_size if input_size is None else input_size
    if (not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ExportError(f"input_size {input_size!r}: expected (height, width), two positive integers")
    return tuple(int(v) for v in size)  # plain ints: the sidecar's JSON holds them


def write_export(path, data, meta=None):
    """The exported file `data` at `path` and, with `meta`, its sidecar beside it, as a pair:
    the sidecar already there goes first, then the file and its new sidecar are written (each
    atomically). A crash between them leaves a file without a sidecar, which `predict` and the
    measurements refuse by name, never a new file beside an earlier export's sidecar."""
    path = Path(path)
    if meta is None:
        write_atomic(path, data, "wb")
        return
    sidecar, text = path.with_suffix(".json"), json.dumps(meta, indent=1)  # before anything is written
    sidecar.unlink(missing_ok=True)
    write_atomic(path, data, "wb")
    write_atomic(sidecar, text)


def metadata(model, spec, input_size, quant, calibration=None, iterations=None,
             input_type="float32"):
    """What an app needs beside the file: labels, input size, normalization, signatures
    (of the static flavour with `iterations`, its output n)."""
    args = model_args(model)
    head = "[B, {}, {}, C]".format(*state_shapes(model, input_size)[0][1:3])
    scale, offset = spec.normalization
    normalization = f"pixel * {scale:.10g} + {offset:.10g} (RGB, pixel in 0..255)"
    if input_type == "uint8":
        normalization = "inside the graph: pass camera bytes (RGB, 0..255); it computes " + normalization
    if input_type == "int8":
        normalization = ("inside the graph: pass camera bytes minus 128 as int8 (RGB byte ^ 0x80); it computes "
                         + normalization)
    meta = {
        "format": "tflite", "flavor": "loop" if iterations is None else "static", "quantization": quant,
        "dataset": spec.name, "labels": list(spec.class_names), "ignore_label": spec.ignore_label,
        "input": {"name": "image", "shape": [1, *input_size, 3], "dtype": input_type,
                  "normalization": normalization},
        "num_iterations": args["num_iterations"], "model_args": args,
        "signatures": {
            "outputs": "image -> output_1 .. output_N logits [B, H, W, C]",
            "anytime": "image, iterations (int32, clamped to 1..N) -> logits",
            "encode": "image -> state_1 .. state_L",
            "step": "state_1 .. state_L, n (int32, 1-based, clamped) -> state_1 .. state_L, "
                    f"logits {head} (the head's resolution: ceil(H/8) x ceil(W/8))",
            "upsample": f"logits {head} from step -> logits [B, H, W, C] (output n)",
            "finish": "state_1 .. state_L after n - 1 steps, n -> logits [B, H, W, C] (output n; "
                      "no state: the cheaper last step)",
        },
        "calibration": calibration,
    }
    meta["signatures"] = {key: meta["signatures"][key] for key in signatures_of(model)}
    if iterations is not None:
        meta["output_n"] = iterations
        meta["signatures"] = {signature_key(iterations): f"image -> logits [B, H, W, C] of output {iterations}"}
        meta["output"] = {"name": "logits", "dtype": "float32"}
    if quant == "int8":  # both flavours hand out int8 logits
        meta["output"] = {"name": "logits", "dtype": "int8",
                          "note": "quantized logits (scale, zero point in the tensor); the argmax needs neither"}
        if iterations is None:
            meta["output"]["signatures"] = [key for key in INT8_LOGITS_SIGNATURES if key in meta["signatures"]]
            meta["output"]["note"] += "; the states and step's head logits stay float32"
    return meta
