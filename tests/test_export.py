"""Every exported file runs in its real runtime (LiteRT, onnxruntime) and matches Keras."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from itnet_keras import build_itnet
from itnet_keras.datasets import get_spec
from itnet_keras.export import artifacts
from itnet_keras.export.artifacts import ExportError
from itnet_keras.export.flatbuffer import (count_buffers_holding, loop_body_dtypes, loop_carried_types,
                                          op_output_dtypes, signature_op_dtypes, signature_ops)
from itnet_keras.export.measure import anytime_device as device
from itnet_keras.export.measure.accuracy import exported_mious
from itnet_keras.export.signatures import SIGNATURES
from itnet_keras.export.tflite import calibration_sample, check_tflite, convert_static, convert_tflite
from itnet_keras.export.tflite_metadata import read_metadata
from itnet_keras.losses import MaskedCrossEntropy
from itnet_keras.metrics import confusion_matrix, mean_iou
from itnet_keras.model import iterative_block
from itnet_keras.pipeline import make_dataset
from test_tools import load_script

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
SPEC = get_spec("builtin")


def trained_tiny(folder, weight_sharing=True):
    """The tiny preset trained briefly on built-in data (moving statistics away from init)."""
    keras.utils.set_random_seed(0)
    model = build_itnet("tiny", input_shape=(*SIZE, 3), weight_sharing=weight_sharing)
    names = model.output_names
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss={n: MaskedCrossEntropy(SPEC.ignore_label) for n in names})
    data = make_dataset("builtin", "train", training=True, limit=64, output_names=names)
    model.fit(data, epochs=3, verbose=0)
    path = folder / f"tiny_{'shared' if weight_sharing else 'independent'}.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def val_images():
    images, labels = make_dataset("builtin", "val", batch_size=6)[0]
    return images, labels


def keras_outputs(model, images):
    return [np.asarray(o) for o in model(images, training=False)]


def assert_agrees(got, want, overall, shapes, what=""):
    """Class maps `got` of an exported file agree with Keras' `want` on more than `overall` of
    the pixels, and on more than `shapes` of those where Keras sees a shape (not class 0, the
    background: 86% of the built-in pixels, which an all-background file would match)."""
    got, want = np.asarray(got), np.asarray(want)
    seen = want != 0
    assert seen.mean() > 0.05, what  # the model sees shapes: the check can fail
    on_all, on_shapes = np.mean(got == want), np.mean(got[seen] == want[seen])
    assert on_all > overall and on_shapes > shapes, f"{what}: {on_all:.3f} of all pixels, {on_shapes:.3f} of shapes"


def runner(path, signature):
    return Interpreter(model_path=str(path)).get_signature_runner(signature)


def run_outputs(path, images, n):
    run = runner(path, "outputs")
    per_image = [run(image=image[None]) for image in images]
    return [np.concatenate([r[f"output_{i}"] for r in per_image]) for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def float32_file(tiny, tmp_path_factory):
    model, _ = tiny
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    summary = convert_tflite(model, path, "float32", SPEC, SIZE)
    return path, summary


def test_float32_matches_keras_on_every_signature(tiny, float32_file, val_images):
    model, _ = tiny
    path, _ = float32_file
    images = val_images[0][:2]
    expected = keras_outputs(model, images)
    n_out = len(expected)
    for got, want in zip(run_outputs(path, images, n_out), expected):
        np.testing.assert_allclose(got, want, atol=1e-4)
    image = images[:1]
    anytime = runner(path, "anytime")
    for n in range(1, n_out + 1):  # anytime with n iterations equals output n
        np.testing.assert_allclose(anytime(image=image, iterations=np.int32(n))["logits"], expected[n - 1][:1],
                                   atol=1e-4)
    for n, clamped in ((0, 1), (-3, 1), (n_out + 5, n_out)):  # out of range: clamped, not a crash
        np.testing.assert_allclose(anytime(image=image, iterations=np.int32(n))["logits"],
                                   expected[clamped - 1][:1], atol=1e-4)
    state = runner(path, "encode")(image=image)
    step, upsample, finish = runner(path, "step"), runner(path, "upsample"), runner(path, "finish")
    for n in range(1, n_out + 1):  # n step calls (then one upsample) equal output n, as does finish
        np.testing.assert_allclose(finish(**state, n=np.int32(n))["logits"], expected[n - 1][:1], atol=1e-4)
        result = step(**state, n=np.int32(n))
        state = {k: v for k, v in result.items() if k.startswith("state_")}
        assert result["logits"].shape == (1, SIZE[0] // 8, SIZE[1] // 8, SPEC.num_classes)
        np.testing.assert_allclose(upsample(logits=result["logits"])["logits"], expected[n - 1][:1], atol=1e-4)
    clamped, last = step(**state, n=np.int32(99)), step(**state, n=np.int32(n_out))  # 99: the last weights
    np.testing.assert_array_equal(clamped["logits"], last["logits"])
    assert not np.allclose(step(**state, n=np.int32(1))["logits"], last["logits"])  # n does pick weights


def test_flatbuffer_keeps_one_loop_and_stores_shared_kernels_once(tiny, float32_file):
    model, _ = tiny
    path, summary = float32_file
    assert summary["flex_ops"] == [] and summary["custom_ops"] == []
    ops = signature_ops(path)
    assert ops["outputs"]["WHILE"] == ops["anytime"]["WHILE"] == 1
    assert all("WHILE" not in ops[key] for key in ("encode", "step", "upsample", "finish"))
    kernels = [v for v in iterative_block(model).weights if v.name.endswith("_kernel") and "head" not in v.name]
    assert kernels
    for kernel in kernels:  # read by 4 signatures and every iteration, stored once
        assert count_buffers_holding(path, kernel.numpy()) == 1, kernel.name
    assert summary["duplicate_buffers"] == []
    metadata = json.loads(path.with_suffix(".json").read_text())
    assert metadata["labels"] == list(SPEC.class_names)
    assert metadata["input"]["shape"] == [1, *SIZE, 3] and metadata["num_iterations"] == 4


def test_independent_weights_also_loop(tmp_path):
    model, _ = trained_tiny(tmp_path, weight_sharing=False)
    path = tmp_path / "independent.tflite"
    convert_tflite(model, path, "float32", SPEC, SIZE)
    images = make_dataset("builtin", "val", batch_size=2)[0][0]
    for got, want in zip(run_outputs(path, images, 4), keras_outputs(model, images)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    stacked = [v for v in iterative_block(model).weights if v.name == "scale1_block1_expand_kernel"][0]
    assert count_buffers_holding(path, stacked.numpy()) == 1  # all N rows in one buffer
    with pytest.raises(ExportError, match="int8 needs a weight-sharing model"):
        convert_tflite(model, tmp_path / "int8.tflite", "int8", SPEC, SIZE, [np.zeros((*SIZE, 3), "float32")])
    assert not (tmp_path / "int8.tflite").exists()


@pytest.mark.parametrize("quant, atol", [("float16", 0.05), ("dynamic", 0.25)])
def test_float16_and_dynamic_stay_close(tiny, val_images, tmp_path, quant, atol):
    """Stated tolerances: logits within `atol` (float16) / argmax agreement (dynamic)."""
    model, _ = tiny
    path = tmp_path / f"tiny_{quant}.tflite"
    convert_tflite(model, path, quant, SPEC, SIZE)
    images = val_images[0][:2]
    for got, want in zip(run_outputs(path, images, 4), keras_outputs(model, images)):
        assert np.abs(got - want).max() <= atol * max(1.0, np.abs(want).max())
        assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.97


@pytest.fixture(scope="module")
def int8_file(tiny, tmp_path_factory):
    model, _ = tiny
    images, record = calibration_sample("builtin", SIZE, count=8, seed=0)
    path = tmp_path_factory.mktemp("int8") / "tiny_int8.tflite"
    summary = convert_tflite(model, path, "int8", SPEC, SIZE, images, record)
    return path, summary, record


def test_int8_agrees_per_pixel_and_in_miou(tiny, int8_file, val_images):
    model, _ = tiny
    path, summary, record = int8_file
    assert summary["ops"]["WHILE"] == 2 and summary["flex_ops"] == []
    assert json.loads(path.with_suffix(".json").read_text())["calibration"]["indices"] == record["indices"]
    # A truly integer loop: the WHILE carries int8 state, its body computes nothing in float32.
    assert all(set(carried) == {"int8", "int32"} for carried in loop_carried_types(path))
    assert all("float32" not in dtypes for dtypes in loop_body_dtypes(path).values())
    # Every conv is int8 in every subgraph, `anytime`'s output-1 branch (an IF branch that only
    # a calibration with iterations=1 runs) included.
    convs = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    assert all(set(ops[c]) == {"int8"} for ops in op_output_dtypes(path) for c in convs if c in ops)
    val, labels = val_images
    for n, (got, want) in enumerate(zip(run_outputs(path, val, 4), keras_outputs(model, val)), start=1):
        got, want = got.argmax(-1), want.argmax(-1)
        # The tiny model (f=8, 3 epochs; 0.99 of all pixels, 0.95 to 0.99 of the shapes here)
        # has few channels to spread quantization error over; the CamVid model keeps 99% (export/README.md).
        assert_agrees(got, want, 0.95, 0.85, f"output {n}")
        miou = [mean_iou(confusion_matrix(labels, p, SPEC.num_classes, SPEC.ignore_label)) for p in (got, want)]
        assert abs(miou[0] - miou[1]) < 0.05, f"output {n}"
    anytime, want = runner(path, "anytime"), keras_outputs(model, val)
    for n in (1, 3):  # the anytime signature (its own calibrated scales) against Keras as well
        got = np.concatenate([anytime(image=image[None], iterations=np.int32(n))["logits"] for image in val])
        assert_agrees(got.argmax(-1), want[n - 1].argmax(-1), 0.95, 0.85, f"anytime({n})")
    encode, finish = runner(path, "encode"), runner(path, "finish")
    got = np.concatenate([finish(**encode(image=image[None]), n=np.int32(1))["logits"] for image in val])
    assert_agrees(got.argmax(-1), want[0].argmax(-1), 0.95, 0.85, "finish(1)")


def test_int8_loop_file_computes_anytime_and_outputs_in_int8_only(tiny, int8_file, val_images):
    """No float island around the control flow: `anytime` (the mixing of its last iteration
    after the WHILE, the IF around it) and `outputs` hold no DEQUANTIZE and no float32 op
    output besides the image's QUANTIZE; the full-resolution logits come out int8, their
    scale and zero point in the tensor, and dequantized they stay close to Keras."""
    model, _ = tiny
    path, _, _ = int8_file
    dtypes = signature_op_dtypes(path)
    for signature in ("anytime", "outputs", "upsample"):
        assert "DEQUANTIZE" not in dtypes[signature], (signature, dtypes[signature])
        floats = {op for op, counts in dtypes[signature].items() if "float32" in counts}
        assert not floats, (signature, floats)
    for op in ("RESIZE_BILINEAR", "CONCATENATION"):
        assert set(dtypes["anytime"][op]) == {"int8"}, dtypes["anytime"][op]
    images = val_images[0][:2]
    want = keras_outputs(model, images)
    for signature in ("outputs", "anytime", "upsample", "finish"):
        assert {d["dtype"] for d in runner(path, signature).get_output_details().values()} == {np.int8}
    assert json.loads(path.with_suffix(".json").read_text())["output"]["dtype"] == "int8"  # the sidecar says so
    anytime = runner(path, "anytime")
    details = anytime.get_output_details()["logits"]
    scale, zero = details["quantization"]
    for n in (1, 4):
        got = np.concatenate([anytime(image=image[None], iterations=np.int32(n))["logits"] for image in images])
        logits = (got.astype(np.float32) - zero) * scale
        assert_agrees(logits.argmax(-1), want[n - 1].argmax(-1), 0.95, 0.85, f"anytime({n})")
        assert np.abs(logits - want[n - 1]).mean() < 0.1 * np.abs(want[n - 1]).max(), f"anytime({n})"


def test_int8_anytime_holds_every_output_where_the_state_grows(tmp_path):
    """Batch-norm statistics under which the block makes its state in a wider range than it
    reads it at: the int8 loop file's `anytime(n)` is as close to Keras as its `outputs` are
    (was: at n = 4 more than twice as far, 70 of a 446 logit range: the carried state was
    clipped to the range the body reads it at; and the ops after `anytime`'s loop were
    calibrated at n = 1 and N only). A two-iteration model, whose `anytime` loop never runs,
    converts too (was: refused, its loop float)."""
    from itnet_keras.batch_norm import moving_statistics

    keras.utils.set_random_seed(0)
    model = build_itnet("tiny", input_shape=(*SIZE, 3))
    rng = np.random.default_rng(0)
    for variable in moving_statistics(model):
        shape = tuple(variable.shape)
        variable.assign(rng.uniform(0.05, 0.5, shape) if "var" in variable.path else rng.normal(0, 0.5, shape))
    images, record = calibration_sample("builtin", SIZE, count=8, seed=0)
    path = tmp_path / "grows.tflite"
    convert_tflite(model, path, "int8", SPEC, SIZE, images, record)
    anytime, outputs = runner(path, "anytime"), runner(path, "outputs")

    def error(run, name, want, **inputs):
        scale, zero = run.get_output_details()[name]["quantization"]
        got = np.concatenate([run(image=image[None], **inputs)[name] for image in x])
        return np.abs((got.astype(np.float32) - zero) * scale - want).max()

    x = np.stack(images[:2]).astype(np.float32)
    for n, want in enumerate(keras_outputs(model, x), start=1):
        looped, all_at_once = error(anytime, "logits", want, iterations=np.int32(n)), error(outputs, f"output_{n}", want)
        assert looped <= 1.25 * all_at_once, (n, looped, all_at_once)
    two = build_itnet("tiny", input_shape=(*SIZE, 3), num_iterations=2)
    convert_tflite(two, tmp_path / "two.tflite", "int8", SPEC, SIZE, images, record)


def _int8_loop_file(cond, folder):
    """A full-integer file of a WHILE whose carried image the body convolves and whose
    condition `cond(i, h)` reads it; returns its bytes."""
    import tensorflow as tf
    from itnet_keras.export.tflite import tflite_converter
    kernel = tf.constant(np.random.default_rng(0).normal(0, 0.3, (3, 3, 4, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 4), tf.float32, name="image")])
    def run(image):
        step = lambda i, h: (i + 1, tf.nn.relu(tf.nn.conv2d(h, kernel, 1, "SAME") + h))
        return {"h": tf.while_loop(cond, step, (tf.constant(0), image))[1]}

    module = tf.Module()
    module.run = run
    tf.saved_model.save(module, str(folder / "saved_model"), signatures={"run": run})
    rng = np.random.default_rng(1)
    images = lambda: ([rng.uniform(0, 1, (1, 8, 8, 4)).astype(np.float32)] for _ in range(8))
    return tflite_converter(folder / "saved_model", ["run"], "int8", images).convert()


@pytest.mark.parametrize("reads, carried", [("quantized", "int8"), ("float", "float32")])
def test_int8_carry_leaves_float_a_state_the_condition_reads_as_float(reads, carried, tmp_path):
    """`carry_int8` carries a tensor as int8 where the loop's condition reads it through a
    QUANTIZE, and leaves it float where the condition reads the float (a CAST; was: retyped
    to int8 under the CAST, which then counted raw int8 values and stopped the loop at
    another iteration). Either way the file computes what the converter's file does."""
    import tensorflow as tf
    from itnet_keras.export.int8_loop import carry_int8
    if reads == "quantized":
        cond = lambda i, h: tf.logical_and(i < 6, tf.reduce_mean(h) < 0.8)
    else:
        cond = lambda i, h: tf.logical_and(i < 6, tf.reduce_sum(tf.cast(h, tf.int32)) < 3)
    converted = _int8_loop_file(cond, tmp_path)
    (tmp_path / "converted.tflite").write_bytes(converted)
    (tmp_path / "carried.tflite").write_bytes(carry_int8(converted))
    assert loop_carried_types(tmp_path / "converted.tflite") == [["int32", "float32"]]
    assert loop_carried_types(tmp_path / "carried.tflite") == [["int32", carried]]
    image = np.random.default_rng(2).uniform(0, 0.5, (1, 8, 8, 4)).astype(np.float32)
    want, got = (runner(tmp_path / f"{name}.tflite", "run")(image=image)["h"] for name in ("converted", "carried"))
    assert want.mean() > 0.2 and abs(got.mean() - want.mean()) < 0.05 * want.mean()


def test_integer_loop_check_refuses_a_float_loop(float32_file):
    path, _ = float32_file
    with pytest.raises(ExportError, match="no WHILE computes in int8"):
        check_tflite(path, SIGNATURES, integer_loop=True)


def test_onnx_loop_matches_keras(tiny, val_images, tmp_path):
    import onnxruntime

    from itnet_keras.export.onnx import convert_onnx, count_constants_holding

    model, _ = tiny
    path = tmp_path / "tiny.onnx"
    summary = convert_onnx(model, path, SPEC, SIZE)
    assert summary["ops"]["Loop"] == 1 and summary["opset"] == 17
    kernel = [v for v in iterative_block(model).weights if v.name == "scale1_block1_expand_kernel"][0]
    assert count_constants_holding(path, kernel.numpy()) == 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = val_images[0][:1]
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    for n, want in enumerate(keras_outputs(model, images), start=1):
        np.testing.assert_allclose(got[f"output_{n}"], want, atol=1e-4)



def test_one_iteration_exports_without_a_loop(val_images, tmp_path):
    """N = 1, which `fit` allows, has no loop to keep: its TFLite and ONNX files have no WHILE
    or Loop and compute Keras' output (was: refused after the conversion, "0 WHILE ops,
    expected 1")."""
    import onnxruntime

    from itnet_keras.export.onnx import convert_onnx

    keras.utils.set_random_seed(0)
    model = build_itnet("tiny", input_shape=(*SIZE, 3), num_iterations=1)
    images = val_images[0][:1]
    want = np.asarray(model(images, training=False))
    path = tmp_path / "n1.tflite"
    convert_tflite(model, path, "float32", SPEC, SIZE)
    assert all("WHILE" not in ops for ops in signature_ops(path).values())
    np.testing.assert_allclose(runner(path, "outputs")(image=images)["output_1"], want, atol=1e-4)
    np.testing.assert_allclose(runner(path, "anytime")(image=images, iterations=np.int32(1))["logits"], want, atol=1e-4)
    assert convert_onnx(model, tmp_path / "n1_onnx.onnx", SPEC, SIZE)["ops"].get("Loop", 0) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "n1_onnx.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": images})[0], want, atol=1e-4)

def test_an_unrolled_model_exports_what_it_has(tmp_path, capsys):
    """A model built with `unroll=True` converts to ONNX without a Loop (was: refused, "0 Loop
    ops, expected 1"); its .tflite sidecar lists only the signatures the file has (was: also
    `anytime`), and `predict` says why it cannot run it. At 66x60, whose coarser scales have
    odd sizes, the ONNX files of both models load in onnxruntime and compute Keras' output
    (was: refused, a resize by float scales floored to 8 rows where 9 were meant), and the
    sidecar gives the head's real shape (was: "H/8, W/8")."""
    import onnxruntime

    from itnet_keras import predict
    from itnet_keras.export.onnx import convert_onnx
    from itnet_keras.export.signatures import signatures_of

    size = (66, 60)  # the head's resolution: 9 x 8
    images = np.random.default_rng(0).random((1, *size, 3), np.float32)
    for unroll in (False, True):
        keras.utils.set_random_seed(0)
        model = build_itnet("tiny", input_shape=(*size, 3), unroll=unroll)
        path = tmp_path / f"unroll_{unroll}.onnx"
        assert convert_onnx(model, path, SPEC, size)["ops"].get("Loop", 0) == int(not unroll)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for got, want in zip(session.run(None, {"image": images}), keras_outputs(model, images)):
            np.testing.assert_allclose(got, want, atol=1e-4)
    path = tmp_path / "unrolled.tflite"
    convert_tflite(model, path, "float32", SPEC, size)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert list(meta["signatures"]) == list(signatures_of(model)) and "anytime" not in meta["signatures"]
    logits = runner(path, "step")(**runner(path, "encode")(image=images), n=np.int32(1))["logits"]
    assert logits.shape == (1, 9, 8, SPEC.num_classes)
    assert "logits [B, 9, 8, C] (the head's resolution" in meta["signatures"]["step"]
    assert "anytime" not in read_metadata(path)["description"]  # (was: "all outputs, anytime(n), and the loop")
    photo = tmp_path / "photo.png"
    keras.utils.save_img(photo, np.zeros((*size, 3), np.uint8))
    assert predict.main([str(path), str(photo), "--output", str(tmp_path / "out")]) == 2
    assert "its model was built with unroll=True (for measurements)" in capsys.readouterr().err


def convert_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "export" / "convert.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_writes_the_file_and_its_metadata(tiny, tmp_path):
    _, model_path = tiny
    out = tmp_path / "cli.tflite"
    result = convert_cli(model_path, "--format", "tflite", "--input-size", "64x64", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WHILE 2" in result.stdout and out.is_file() and out.with_suffix(".json").is_file()


def test_a_crash_between_a_file_and_its_sidecar_leaves_no_earlier_sidecar(tmp_path, monkeypatch):
    """A file and its sidecar are written as a pair (was: the new file beside the previous
    export's sidecar, with its input type and quantization, had a crash come between them)."""
    path = tmp_path / "itnet.tflite"
    artifacts.write_export(path, b"float32 file", {"format": "tflite", "quantization": "float32"})
    write = artifacts.write_atomic

    def crash_at_the_sidecar(target, *args):
        if Path(target).suffix == ".json":
            raise KeyboardInterrupt
        write(target, *args)

    monkeypatch.setattr(artifacts, "write_atomic", crash_at_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        artifacts.write_export(path, b"int8 file", {"format": "tflite", "quantization": "int8"})
    assert path.read_bytes() == b"int8 file" and not path.with_suffix(".json").exists()


def test_a_library_export_without_a_size_says_so(tiny, tmp_path):
    """Each converter called as a library with neither a dataset spec nor an input size, or
    with a size that is not (height, width), raises ExportError naming what to pass (was:
    AttributeError on None) and writes nothing."""
    from itnet_keras.export.onnx import convert_onnx
    model, _ = tiny
    calls = [lambda **size: convert_tflite(model, tmp_path / "x.tflite", **size),
             lambda **size: convert_static(model, tmp_path / "s.tflite", [1], **size),
             lambda **size: convert_onnx(model, tmp_path / "x.onnx", **size)]
    for call in calls:
        with pytest.raises(ExportError, match=r"pass input_size=\(height, width\) or spec"):
            call()
        with pytest.raises(ExportError, match=r"input_size \(0, 64\): expected \(height, width\)"):
            call(input_size=(0, 64))
    assert list(tmp_path.iterdir()) == []
    for bad in ((), [], (True, True), (64.0, 64), "64x64"):
        with pytest.raises(ExportError, match="expected \\(height, width\\)"):
            artifacts.export_size(None, bad)
    size = artifacts.export_size(None, np.array([64, 48]))  # numpy's ints, as plain ones for the sidecar's JSON
    assert size == (64, 48) and all(type(v) is int for v in size)
    assert artifacts.export_size(SPEC, None) == tuple(SPEC.image_size)


def test_cli_errors_name_the_culprit_and_leave_nothing(tiny, tmp_path):
    _, model_path = tiny
    out = tmp_path / "x.tflite"
    cases = [
        ([tmp_path / "missing.keras", "--output", out], "missing.keras does not exist"),
        ([model_path, "--quant", "int4", "--output", out], "--quant: invalid choice: 'int4'"),
        ([model_path, "--output", tmp_path / "file" / "x.tflite"], "cannot write there"),
        ([model_path, "--output", tmp_path / "x.json"], "x.json: expected a file name ending in .tflite"),
        ([model_path, "--format", "onnx", "--quant", "int8", "--output", tmp_path / "x.onnx"],
         "--quant int8 needs --format tflite"),
        ([model_path, "--quant", "int8", "--calibration-images", "0", "--output", out],
         "argument --calibration-images: '0': expected a number > 0"),
        ([model_path, "--quant", "int8", "--seed", "-1", "--output", out], "argument --seed: '-1': expected an integer"),
    ]
    cases += [  # the metadata would be wrong, or overwrite another file's
        ([model_path, "--data", "camvid", "--output", out], f"--data camvid: 11 classes, but {model_path} has 4"),
        ([model_path, "--output", tmp_path / "d.tflite"], f"{tmp_path / 'd.json'} is a folder"),
        ([model_path, "--format", "onnx", "--output", tmp_path / "other.onnx"], "is the sidecar of a .tflite file"),
        ([model_path, "--output", tmp_path / "mine.tflite"], "is not a sidecar of ours"),
    ]
    (tmp_path / "d.json").mkdir()
    (tmp_path / "other.json").write_text('{"format": "tflite"}')
    (tmp_path / "mine.json").write_text("[1, 2]")
    (tmp_path / "file").write_text("a file, not a folder")
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    cases.append(([plain, "--output", out], "not an ItNet"))
    five = tmp_path / "five.keras"  # no dataset has 5 classes: the model file is named (was: "the model")
    build_itnet("tiny", num_classes=5).save(five)
    cases.append(([five, "--output", out], f"{five} has 5 classes, which names no single dataset: pass --data"))
    for args, message in cases:
        result = convert_cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-1500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "file", "five.keras", "mine.json", "other.json",
                                                          "plain.keras"]
    assert (tmp_path / "other.json").read_text() == '{"format": "tflite"}'


def test_graph_memory_of_loop_and_unrolled_files(tiny, tmp_path):
    from itnet_keras.export.measure.memory import activation_bytes, model_rows

    model, _ = tiny
    loop, unrolled = model_rows(model, "tiny", SIZE, tmp_path)
    assert (loop["while_ops"], unrolled["while_ops"]) == (2, 0)
    # With BN between iterations (after the residual add) nothing folds into the shared
    # kernels, so the converter stores them once in the unrolled file too.
    kernel = [v for v in iterative_block(model).weights if v.name == "scale1_block1_expand_kernel"][0]
    assert count_buffers_holding(tmp_path / "tiny_unrolled_float32.tflite", kernel.numpy()) == 1
    assert unrolled["weight_bytes"] < 1.5 * loop["weight_bytes"]
    # All N outputs are alive at the end of `outputs`; nothing else of that size is.
    all_outputs = 4 * SIZE[0] * SIZE[1] * SPEC.num_classes * 4
    image = SIZE[0] * SIZE[1] * 3 * 4
    for row in (loop, unrolled):
        assert all_outputs <= row["activation_bytes"] <= all_outputs + image + 64 * 1024
        assert row["cost_graph_bytes_collapsed"] < row["cost_graph_bytes_unrolled"]
    encode = activation_bytes(tmp_path / "tiny_float32.tflite", "encode")
    assert image < encode < loop["activation_bytes"]


def test_graph_memory_command(tmp_path, capsys):
    graph_memory = load_script("export", "graph_memory")
    out = tmp_path / "memory.md"
    assert graph_memory.main(["--presets", "tiny", "--input-size", "32x32", "--output", str(out)]) == 0
    assert "| tiny unrolled float32 | 0 |" in out.read_text()
    assert len(json.loads(out.with_suffix(".json").read_text())) == 2
    assert graph_memory.main([str(tmp_path / "nope.tflite")]) == 2
    assert "nope.tflite does not exist" in capsys.readouterr().err


def test_latency_benchmark_command(tmp_path):
    measure_latency = load_script("export", "measure_latency")
    out = tmp_path / "latency.md"
    assert measure_latency.main(["--preset", "tiny", "--input-size", "32x32", "--threads", "1", "--repeats", "2",
                                 "--output", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    paths = ("anytime_s", "step_s", "finish_s", "unrolled_s", "unrolled_state_s")
    assert all(len(row[p]) == 4 and min(row[p]) > 0 for p in paths)
    assert row["unrolled_outputs_s"] > 0 and row["loop_outputs_s"] > 0
    assert "| app, `finish` last ms | / unrolled |" in out.read_text()
    # --quant times the outputs 1, 2, 4 ... up to N by default (was: 1 2 4 8 16, an error after
    # the conversions for the 4-output tiny preset)
    assert measure_latency.main(["--preset", "tiny", "--input-size", "32x32", "--threads", "1", "--repeats", "1",
                                 "--quant", "float32", "--output", str(out)]) == 0
    assert list(json.loads(out.with_suffix(".json").read_text())["1"]) == ["1", "2", "4"]


def test_measurement_scripts_name_bad_input(tiny, tmp_path, capsys):
    measure_latency, measure_parts = load_script("export", "measure_latency"), load_script("export", "measure_parts")
    image = tmp_path / "x.png"
    image.write_bytes(b"not a model")
    assert measure_latency.main([str(image)]) == 2
    assert f"error: {image} is not a .tflite file" in capsys.readouterr().err
    assert measure_latency.main([str(tmp_path / "none.tflite")]) == 2
    assert f"error: {tmp_path / 'none.tflite'} does not exist" in capsys.readouterr().err
    assert measure_parts.main([str(tmp_path / "none.keras")]) == 2
    assert f"{tmp_path / 'none.keras'} does not exist" in capsys.readouterr().err
    for main, flag in [(measure_latency.main, "--repeats"), (measure_latency.main, "--threads"),
                       (measure_parts.main, "--repeats"), (measure_parts.main, "--calibration-images")]:
        with pytest.raises(SystemExit) as exit_:
            main(["--preset", "tiny", flag, "0"])
        assert exit_.value.code == 2 and f"argument {flag}: '0': expected a number > 0" in capsys.readouterr().err
    # measure_parts: the data from --data-dir, a model of the preset's class count (was: a DatasetError
    # traceback without CamVid at its usual place; a model of another class count measured)
    assert measure_parts.main(["--preset", "camvid_shared", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert measure_parts.main([str(tiny[1]), "--preset", "camvid_shared"]) == 2
    assert f"error: {tiny[1]} has 4 classes, --preset camvid_shared's dataset camvid 11" in capsys.readouterr().err
    one = tmp_path / "one.keras"
    build_itnet("tiny", num_classes=11, num_iterations=1).save(one)
    assert measure_parts.main([str(one), "--preset", "camvid_shared"]) == 2
    assert f"error: {one} has one output; the parts are those of outputs 1 and 2" in capsys.readouterr().err
    assert measure_parts.main(["--preset", "cityscapes_shared"]) == 2  # camera bytes are not its normalized image
    assert "error: --preset cityscapes_shared: the parts' int8 files take camera bytes" in capsys.readouterr().err
    # A table named .json would be overwritten by its own data (was: the table lost, silently).
    for script in ("measure_latency", "measure_parts", "measure_accuracy", "graph_memory"):
        with pytest.raises(SystemExit) as exit_:
            load_script("export", script).main(["x.keras", "--output", "results.json"])
        assert exit_.value.code == 2 and "argument --output: 'results.json': the table's data goes beside it as " \
            ".json, which would overwrite it; give a .md name" in capsys.readouterr().err, script
    # flags that would be ignored are refused (was: accepted, and the measurement ran without them)
    for script, args, message in [
        ("measure_latency", ["x.tflite", "--iterations", "2"], "--iterations needs --quant"),
        ("measure_latency", ["x.tflite", "--input-type", "int8"], "--input-type needs --quant"),
        ("measure_latency", ["x.tflite", "--input-size", "64x64"], "--input-size is for --preset"),
        ("measure_latency", ["--preset", "tiny", "--unrolled", "u.tflite"], "--unrolled compares with a FILE"),
        ("graph_memory", ["x.tflite", "--quant", "int8"], "--quant is for a .keras model or --presets"),
        ("graph_memory", ["x.tflite", "--input-size", "64x64"], "--input-size is for a .keras model or --presets"),
    ]:
        with pytest.raises(SystemExit):
            load_script("export", script).main(args)
        assert message in capsys.readouterr().err, (script, args)
    # a file without the loop's signatures (was: LiteRT's "Invalid signature_key", a traceback)
    import tensorflow as tf

    plain = tmp_path / "plain.tflite"
    plain.write_bytes(tf.lite.TFLiteConverter.from_keras_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])).convert())
    assert measure_latency.main([str(plain), "--repeats", "1", "--threads", "1"]) == 2
    assert f"error: {plain} has signatures serving_default, not outputs, anytime" in capsys.readouterr().err
    # neither a file nor presets (was: "..., not both")
    for script, what in (("measure_latency", "give a .tflite file or --preset\n"),
                         ("graph_memory", "give a .keras/.tflite file or --presets\n")):
        with pytest.raises(SystemExit):
            load_script("export", script).main([])
        assert capsys.readouterr().err.endswith(f"error: {what}"), script
        with pytest.raises(SystemExit):
            load_script("export", script).main(["x.tflite", "--preset" + ("s" if script == "graph_memory" else ""), "tiny"])
        assert capsys.readouterr().err.endswith(f"error: {what[:-1]}, not both\n"), script


def test_latency_parts_are_prefixes_of_the_real_outputs(tiny):
    """export/measure_parts.py times parts of output n's graph: "output n" is output n, and its
    part before the upsampling resized by the "8x upsampling alone" part is output n too."""
    from itnet_keras.export.measure.parts import part_functions
    from itnet_keras.export.static import unrolled_copy

    model, _ = tiny
    parts = part_functions(unrolled_copy(model))
    images = np.random.default_rng(0).random((1, *SIZE, 3), np.float32)
    outputs = model(images)
    for n in (1, 2):
        np.testing.assert_allclose(parts[f"output {n}"][0](images), outputs[n - 1], atol=1e-5)
        head = parts[f"output {n} before upsampling"][0](images)
        assert head.shape[1:] == parts["8x upsampling alone"][1]
        np.testing.assert_allclose(parts["8x upsampling alone"][0](head), outputs[n - 1], atol=1e-5)


@pytest.mark.large
def test_latency_parts_command(tmp_path):
    out = tmp_path / "parts.md"
    assert load_script("export", "measure_parts").main(["--preset", "tiny", "--repeats", "1", "--output", str(out)]) == 0
    times = json.loads(out.with_suffix(".json").read_text())
    assert len(times) == 9 * 4 and all(min(t) > 0 for t in times.values())
    assert "| 8x upsampling alone |" in out.read_text()


def test_latency_files_of_a_trained_model_compute_its_outputs(tiny, tmp_path):
    """measure_latency.py --quant --model times the trained model's files, not random weights;
    a model of another dataset is refused with the flag and the class counts."""
    from itnet_keras.export.measure.latency import quant_files

    model, model_path = tiny
    files = quant_files("tiny", SIZE, tmp_path, ["float32"], [2], None, loop=False, trained=model)
    images = np.random.default_rng(0).random((1, *SIZE, 3), np.float32)
    run = Interpreter(model_path=str(files["static", "float32", 2])).get_signature_runner("output_2")
    (got,) = run(image=images).values()
    np.testing.assert_allclose(got, model(images)[1], atol=2e-4)
    out = tmp_path / "latency.md"
    args = ["--preset", "camvid_shared", "--quant", "float32", "--model", str(model_path), "--output", str(out)]
    error = subprocess.run([sys.executable, str(ROOT / "export" / "measure_latency.py"), *args],
                           capture_output=True, text=True)
    assert error.returncode == 2
    assert f"--model: {model_path} has 4 classes, --preset camvid_shared's dataset camvid 11" in error.stderr
    assert not out.exists()


def test_export_evaluation_command(tiny, float32_file, tmp_path, capsys):
    from itnet_keras.export.onnx import convert_onnx

    measure_accuracy = load_script("export", "measure_accuracy")
    model, model_path = tiny
    path, _ = float32_file
    onnx_path = tmp_path / "tiny.onnx"
    convert_onnx(model, onnx_path, SPEC, SIZE)
    out = tmp_path / "accuracy.md"
    assert measure_accuracy.main([str(model_path), str(path), str(onnx_path), "--limit", "8",
                                  "--output", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    for name in (path.name, onnx_path.name):  # float32 and ONNX: the same argmax as Keras
        np.testing.assert_allclose(results[name], results["keras"], atol=1e-3)
    for signature in ("anytime", "finish"):  # each output computed alone, as an app does
        assert measure_accuracy.main([str(model_path), str(path), "--limit", "8", "--signature", signature,
                                      "--output", str(out)]) == 0
        results = json.loads(out.with_suffix(".json").read_text())
        np.testing.assert_allclose(results[path.name], results["keras"], atol=1e-3)
    copy = tmp_path / "copy" / path.name  # two files of one name: a column each, named by its path
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert measure_accuracy.main([str(model_path), str(path), str(copy), "--limit", "8", "--output", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results) == ["keras", str(path), str(copy)] and results[str(path)] == results[str(copy)]
    capsys.readouterr()
    assert measure_accuracy.main([str(model_path), str(tmp_path / "none.tflite")]) == 2
    assert f"error: {tmp_path / 'none.tflite'} does not exist" in capsys.readouterr().err
    # ONNX: outputs only, refused before any file is evaluated (was: after them all, as "not one of"
    # the signatures it names)
    assert measure_accuracy.main([str(model_path), str(onnx_path), "--signature", "anytime"]) == 2
    assert f"error: --signature anytime: {onnx_path} is an ONNX file, which has the `outputs` signature only" \
        in capsys.readouterr().err


def test_export_evaluation_refuses_a_scale_the_file_was_not_made_for(tiny, float32_file, capsys):
    measure_accuracy = load_script("export", "measure_accuracy")
    _, model_path = tiny
    path, _ = float32_file
    assert measure_accuracy.main([str(model_path), str(path), "--scale", "2", "--limit", "4"]) == 2
    assert (f"error: {path} takes 64x64 images but --scale 2 gives builtin images of 32x32: pass --scale 1"
            in capsys.readouterr().err)
    run = path.parent / "run"  # the scale its run recorded: not named as a flag never given
    run.mkdir(exist_ok=True)
    shutil.copy(model_path, run / "best.keras")
    (run / "config.json").write_text(json.dumps({"fit": {"data": "builtin", "scale": 2}}))
    assert measure_accuracy.main([str(run / "best.keras"), str(path), "--limit", "4"]) == 2
    assert (f"error: {path} takes 64x64 images but scale 2 (the model's training scale, recorded beside it, else 1) "
            "gives builtin images of 32x32: pass --scale 1" in capsys.readouterr().err)
    # the model's dataset: the one with its class count (was: builtin for every model), checked
    assert measure_accuracy.main([str(model_path), str(path), "--data", "camvid", "--limit", "4"]) == 2
    assert f"error: --data camvid: 11 classes, but {model_path} has 4" in capsys.readouterr().err
    missing = path.with_name("missing.keras")  # the model is checked first, not blamed on a file
    assert measure_accuracy.main([str(missing), str(path)]) == 2
    assert f"error: {missing} does not exist" in capsys.readouterr().err
    fake = path.with_name("fake.tflite")
    fake.write_bytes(b"GIF89a, not a model" * 100)
    assert measure_accuracy.main([str(model_path), str(fake)]) == 2
    assert f"error: cannot read {fake} as an exported ItNet" in capsys.readouterr().err
    assert measure_accuracy.main([str(model_path), str(model_path)]) == 2
    assert f"error: {model_path}: expected a .tflite or .onnx file" in capsys.readouterr().err


def test_app_driven_policies_stop_where_they_should(tiny, float32_file, val_images):
    model, _ = tiny
    path, _ = float32_file
    images, _ = val_images
    runner = device.StepRunner(path, threads=1)
    n_max = runner.num_iterations
    expected = keras_outputs(model, images[:1])
    for n in range(1, n_max + 1):
        logits, done, _ = runner.run(images[0], device.fixed(n))
        assert done == n
        np.testing.assert_allclose(logits, expected[n - 1][0], atol=1e-4)
    assert runner.run(images[0], device.deadline(0.0))[1] == 1  # the first answer always comes
    assert runner.run(images[0], device.deadline(60.0))[1] == n_max
    assert runner.run(images[0], device.until_stable(1.0))[1] == 2  # needs a previous output to compare
    assert runner.run(images[0], device.until_stable(-1.0))[1] == n_max
    assert runner.run(images[0], device.until_confident(0.0))[1] == 1
    assert runner.run(images[0], device.until_confident(1.01))[1] == n_max
    assert runner.run(images[0], device.either(device.fixed(n_max), device.until_confident(0.0)))[1] == 1


def test_a_deadline_holds_with_the_answers_upsampling(tiny, float32_file, val_images, monkeypatch):
    """On a clock where the first step takes 0.5 s (it has no mixing block), every later one
    1 s and the upsampling 0.5 s, `deadline(s)` ends every image within s (was: the upsampling
    after the last step, not foreseen, overshot it; then step 2, foreseen as long as step 1)."""
    path, _ = float32_file
    images, _ = val_images
    runner = device.StepRunner(path, threads=1)
    clock = [0.0]
    monkeypatch.setattr(device, "perf_counter", lambda: clock[0])

    def taking(seconds, signature):
        def run(**inputs):
            clock[0] += seconds(inputs)
            return signature(**inputs)
        return run

    runner.step = taking(lambda inputs: 0.5 if inputs["n"] == 1 else 1.0, runner.step)
    runner.upsample = taking(lambda inputs: 0.5, runner.upsample)
    runner.run(images[0], device.fixed(runner.num_iterations))  # the runner learns the times
    for seconds in (1.8, 2.0, 2.5, 3.0, 3.4):
        _, done, spent = runner.run(images[0], device.deadline(seconds))
        assert spent <= seconds and done == int(seconds), seconds


def test_policies_run_files_that_take_camera_bytes(tiny, float32_file, val_images, tmp_path):
    """A loop file made with --input-type uint8 takes the camera bytes: the runner turns the
    dataset's normalized images back into them (was: float32 fed to a uint8 input, an error)."""
    model, _ = tiny
    path = tmp_path / "bytes.tflite"
    convert_tflite(model, path, "float32", SPEC, SIZE, input_type="uint8")
    with pytest.raises(ValueError, match="camera bytes"):
        device.StepRunner(path, threads=1)
    runner = device.StepRunner(path, threads=1, normalization=SPEC.normalization)
    float_runner = device.StepRunner(float32_file[0], threads=1)
    image = val_images[0][0]
    for n in (1, runner.num_iterations):
        logits, done, _ = runner.run(image, device.fixed(n))
        assert done == n
        # the bytes lose what rounding the normalized image to 8 bits loses
        agree = np.mean(logits.argmax(-1) == float_runner.run(image, device.fixed(n))[0].argmax(-1))
        assert agree > 0.99, (n, agree)


def test_policy_evaluation_matches_the_outputs_signature(float32_file):
    path, _ = float32_file
    runner = device.StepRunner(path, threads=1)
    dataset = make_dataset("builtin", "val", batch_size=4, limit=8)
    result = device.evaluate_policy(runner, dataset, device.fixed(2))
    assert result["mean_iterations"] == 2 and result["iterations"] == [0, 8, 0, 0]
    assert result["miou"] == pytest.approx(exported_mious(path, dataset)[1], abs=1e-9)
