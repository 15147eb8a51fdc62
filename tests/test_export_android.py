"""Files an Android app takes as they are: the static flavour under MediaPipe's
ImageSegmenter and LiteRT, metadata inside every file, camera-byte input, an integer int8 file."""

import dataclasses
import json

import mediapipe as mp
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from mediapipe.tasks.python import BaseOptions, vision
from tensorflow.lite.python import schema_py_generated as schema
from test_export import SIZE, SPEC, assert_agrees, convert_cli, keras_outputs, trained_tiny
from test_tools import load_script

from itnet_keras.export.artifacts import ExportError
from itnet_keras.export.flatbuffer import load, op_name, op_output_dtypes
from itnet_keras.export.measure.accuracy import exported_mious
from itnet_keras.export.tflite import calibration_sample, check_static, convert_static, convert_tflite
from itnet_keras.export.tflite_metadata import read_metadata
from itnet_keras.export.xnnpack_forms import channel_affines, separable_upsampling
from itnet_keras.pipeline import make_dataset

# The ops the LiteRT GPU delegate documents as supported ("GPU ML operations support",
# https://ai.google.dev/edge/litert/performance/gpu, as of 2025-07): a static float file
# must use no other, so that the whole graph runs on a phone's GPU.
GPU_DELEGATE_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXP", "FULLY_CONNECTED",
    "LOGICAL_AND", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MINIMUM", "MUL", "PAD", "PRELU", "RELU",
    "RELU6", "RESHAPE", "RESIZE_BILINEAR", "SOFTMAX", "STRIDED_SLICE", "SUB", "TRANSPOSE_CONV",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return trained_tiny(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def camera_frames():
    """Validation images as camera bytes (uint8 RGB) and as the model's input (x / 255)."""
    images, _ = make_dataset("builtin", "val", batch_size=6)[0]
    frames = np.round(np.asarray(images) * 255).astype(np.uint8)
    return frames, frames.astype(np.float32) / 255


@pytest.fixture(scope="module")
def static_float32(tiny, tmp_path_factory):
    model, _ = tiny
    path = tmp_path_factory.mktemp("static") / "tiny.tflite"
    return convert_static(model, path, [2, 4], "float32", SPEC, SIZE)


def run_static(path, images, n, dtype=np.float32):
    run = Interpreter(model_path=str(path)).get_signature_runner(f"output_{n}")
    return np.concatenate([run(image=image[None].astype(dtype))["logits"] for image in images])


def category_masks(segmenter, frames):
    """MediaPipe's category mask of each frame, copied (the view dies with its result)."""
    images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f)) for f in frames]
    return np.stack([np.array(segmenter.segment(image).category_mask.numpy_view()[..., 0]) for image in images])


def test_static_files_one_per_n_match_keras(tiny, static_float32, camera_frames):
    model, _ = tiny
    _, images = camera_frames
    want = keras_outputs(model, images)
    assert sorted(p.name for p in static_float32) == ["tiny_n2.tflite", "tiny_n4.tflite"]
    for path, summary in static_float32.items():
        n = int(path.stem.split("_n")[1])
        assert len(summary["subgraphs"]) == 1 and not {"WHILE", "IF"} & set(summary["ops"])
        np.testing.assert_allclose(run_static(path, images, n), want[n - 1], atol=2e-4)


def test_mediapipe_image_segmenter_runs_the_static_file(tiny, static_float32, camera_frames):
    model, _ = tiny
    frames, images = camera_frames
    want = keras_outputs(model, images)
    options = vision.ImageSegmenterOptions(output_category_mask=True, output_confidence_masks=False,
                                           base_options=BaseOptions(model_asset_path=""))
    for path in static_float32:
        n = int(path.stem.split("_n")[1])
        options.base_options = BaseOptions(model_asset_path=str(path))
        with vision.ImageSegmenter.create_from_options(options) as segmenter:
            assert segmenter.labels == list(SPEC.class_names)
            masks = category_masks(segmenter, frames)
        expected = want[n - 1].argmax(-1)
        assert len(np.unique(expected)) > 1  # a trained model: the check can fail
        assert np.mean(masks == expected) >= 0.995, f"output {n}"


def test_mediapipe_confidence_masks_are_probabilities(tiny, static_float32, camera_frames):
    """MediaPipe's default output, confidence masks: the softmax of the logits (the file's
    activation), one mask per class."""
    model, _ = tiny
    frames, images = camera_frames
    path = max(static_float32)  # output 4
    logits = keras_outputs(model, images)[3]
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(path)))
    assert options.output_confidence_masks and not options.output_category_mask  # MediaPipe's defaults
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        for frame, want in zip(frames, probabilities):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            masks = segmenter.segment(image).confidence_masks
            got = np.stack([np.array(m.numpy_view()).reshape(want.shape[:2]) for m in masks], -1)
            np.testing.assert_allclose(got, want, atol=2e-3)


def test_mediapipe_refuses_a_loop_file(float32_loop):
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(float32_loop)))
    with pytest.raises(Exception, match="single subgraph"):
        vision.ImageSegmenter.create_from_options(options)


def test_static_float_file_uses_only_gpu_delegate_ops(static_float32):
    for path, summary in static_float32.items():
        assert set(summary["ops"]) <= GPU_DELEGATE_OPS, f"{path.name}: {set(summary['ops']) - GPU_DELEGATE_OPS}"


@pytest.fixture(scope="module")
def float32_loop(tiny, tmp_path_factory):
    model, _ = tiny
    path = tmp_path_factory.mktemp("loop") / "tiny.tflite"
    convert_tflite(model, path, "float32", SPEC, SIZE)
    return path


def test_metadata_is_inside_loop_and_static_files(float32_loop, static_float32):
    for path in [float32_loop, *static_float32]:
        meta = read_metadata(path)
        assert meta["name"] == "ItNet" and "ItNet semantic segmentation (builtin" in meta["description"]
        assert meta["associated_files"]["labels.txt"].split("\n") == list(SPEC.class_names)
        graph = meta["subgraph_metadata"][0]
        image = next(t for t in graph["input_tensor_metadata"] if t["name"] == "image")
        # pixel * (1/255) + 0 == (pixel - mean) / std with mean 0, std 255
        assert image["process_units"][0]["options"] == {"mean": [0.0], "std": [255.0]}
        logits = next(t for t in graph["output_tensor_metadata"] if t["name"] == "logits")
        assert logits["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
        assert graph["custom_metadata"][0]["name"] == "SEGMENTER_METADATA"  # activation SOFTMAX
        assert meta["min_parser_version"] == "1.5.0"  # custom metadata came with 1.5.0
    assert "output 4 of 4" in read_metadata(max(static_float32))["description"]


@pytest.mark.parametrize("quant, agree, on_shapes", [("float16", 0.99, 0.99), ("dynamic", 0.97, 0.9),
                                                     ("int8", 0.95, 0.75)])
def test_static_file_in_every_quantization_mode(tiny, camera_frames, tmp_path, quant, agree, on_shapes):
    model, _ = tiny
    _, images = camera_frames
    calibration = calibration_sample("builtin", SIZE, count=8, seed=0)[0] if quant == "int8" else None
    (path, summary), = convert_static(model, tmp_path / "q.tflite", [4], quant, SPEC, SIZE, calibration).items()
    assert len(summary["subgraphs"]) == 1 and not {"WHILE", "IF"} & set(summary["ops"])
    got, want = run_static(path, images, 4).argmax(-1), keras_outputs(model, images)[3].argmax(-1)
    assert_agrees(got, want, agree, on_shapes, quant)


def test_uint8_input_takes_camera_bytes(tiny, camera_frames, static_float32, tmp_path):
    model, _ = tiny
    frames, images = camera_frames
    (path, _), = convert_static(model, tmp_path / "u8.tflite", [4], "float32", SPEC, SIZE,
                                input_type="uint8").items()
    assert Interpreter(model_path=str(path)).get_input_details()[0]["dtype"] == np.uint8
    float_input = next(p for p in static_float32 if p.stem.endswith("_n4"))
    np.testing.assert_allclose(run_static(path, frames, 4, np.uint8), run_static(float_input, images, 4), atol=2e-4)
    # the file normalizes the bytes itself: MediaPipe must pass them as they are (mean 0, std 1)
    assert read_metadata(path)["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"] == [
        {"options_type": "NormalizationOptions", "options": {"mean": [0.0], "std": [1.0]}}]


# CamVid-like pixel / 255 is a quantization of its own (scale 1/255, zero point 0); pixel /
# 127.5 - 1 (Cityscapes) is not (zero point 127.5): that file takes bytes as (1, 0) and
# normalizes them in int8.
@pytest.mark.parametrize("normalization, quantization", [((1 / 255, 0.0), (1 / 255, 0)),
                                                         ((1 / 127.5, -1.0), (1.0, 0))])
def test_int8_static_file_is_integer_from_camera_bytes_to_logits(tiny, camera_frames, tmp_path, normalization,
                                                                 quantization):
    model, _ = tiny
    frames, _ = camera_frames
    spec = dataclasses.replace(SPEC, normalization=normalization)
    images = frames * np.float32(normalization[0]) + np.float32(normalization[1])  # what Keras sees
    calibration = [np.asarray(i) * 255 * np.float32(normalization[0]) + np.float32(normalization[1])
                   for i in calibration_sample("builtin", SIZE, count=8, seed=0)[0]]
    (path, summary), = convert_static(model, tmp_path / "i8.tflite", [4], "int8", spec, SIZE, calibration,
                                      input_type="uint8").items()
    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_input_details()[0]
    assert details["dtype"] == np.uint8 and details["quantization"] == pytest.approx(quantization)
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # No float island: every op outputs int8 (the uint8 input enters by an integer QUANTIZE).
    (dtypes,) = op_output_dtypes(path)
    assert "DEQUANTIZE" not in dtypes and all(set(c) == {"int8"} for c in dtypes.values()), dict(dtypes)
    got = run_static(path, frames, 4, np.uint8).argmax(-1)
    assert_agrees(got, keras_outputs(model, images)[3].argmax(-1), 0.95, 0.75, "output 4")
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                           output_category_mask=True, output_confidence_masks=False)
    with vision.ImageSegmenter.create_from_options(options) as segmenter:  # takes int8 logits too
        masks = category_masks(segmenter, frames)
    # int8 kernels of different builds round differently near ties of this small model's
    # logits: MediaPipe's mask equals LiteRT's (XNNPACK) argmax on 98-99% of pixels, as
    # LiteRT's own builtin int8 kernels do (98-99% too); the float32 file agrees on all.
    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    run = Interpreter(model_path=str(path), experimental_op_resolver_type=builtin).get_signature_runner("output_4")
    reference = np.concatenate([run(image=f[None])["logits"] for f in frames]).argmax(-1)
    assert min(np.mean(masks == got), np.mean(reference == got)) >= 0.97


def test_int8_input_is_the_camera_bytes_minus_128(tiny, camera_frames, tmp_path):
    """`--input-type int8`: the uint8 input with zero point 128 less, so that the image's
    QUANTIZE is int8 -> int8 (which XNNPACK runs, unlike uint8 -> int8) and the logits stay."""
    model, _ = tiny
    frames, images = camera_frames
    signed = (frames ^ np.uint8(0x80)).view(np.int8)
    calibration = calibration_sample("builtin", SIZE, count=4, seed=0)[0]
    (u8, _), = convert_static(model, tmp_path / "u8.tflite", [4], "int8", SPEC, SIZE, calibration,
                              input_type="uint8").items()
    (i8, _), = convert_static(model, tmp_path / "i8.tflite", [4], "int8", SPEC, SIZE, calibration,
                              input_type="int8").items()
    details = Interpreter(model_path=str(i8)).get_input_details()[0]
    assert details["dtype"] == np.int8 and details["quantization"] == (pytest.approx(1 / 255), -128)
    file = load(i8)
    (graph,), codes = file.subgraphs, [op_name(c) for c in file.operatorCodes]
    quantize_inputs = [graph.tensors[op.inputs[0]].type for op in graph.operators if codes[op.opcodeIndex] == "QUANTIZE"]
    assert set(quantize_inputs) == {schema.TensorType.INT8}  # the image's too
    (dtypes,) = op_output_dtypes(i8)
    assert all(set(c) == {"int8"} for c in dtypes.values()), dict(dtypes)
    got, want = run_static(i8, signed, 4, np.int8), run_static(u8, frames, 4, np.uint8)
    assert np.abs(got.astype(int) - want).max() <= 1 and np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.995
    assert "minus 128" in next(t for t in read_metadata(i8)["subgraph_metadata"][0]["input_tensor_metadata"]
                               if t["name"] == "image")["description"]
    assert json.loads(i8.with_suffix(".json").read_text())["input"]["dtype"] == "int8"
    loop = tmp_path / "loop.tflite"
    convert_tflite(model, loop, "int8", SPEC, SIZE, calibration, input_type="int8")
    interpreter = Interpreter(model_path=str(loop))
    for signature in ("outputs", "anytime", "encode"):
        details = interpreter.get_signature_runner(signature).get_input_details()["image"]
        assert details["dtype"] == np.int8 and details["quantization"] == (pytest.approx(1 / 255), -128)
    run = interpreter.get_signature_runner("anytime")
    got = np.concatenate([run(image=f[None], iterations=np.int32(4))["logits"] for f in signed]).argmax(-1)
    assert_agrees(got, keras_outputs(model, images)[3].argmax(-1), 0.95, 0.75, "output 4")
    # measure_accuracy gives each file the bytes its input takes
    dataset = make_dataset("builtin", "val", batch_size=4, limit=8)
    static_miou = exported_mious(i8, dataset)[3]
    assert static_miou == pytest.approx(exported_mious(u8, dataset)[3], abs=0.01)
    assert exported_mious(loop, dataset, signature="anytime")[3] == pytest.approx(static_miou, abs=0.05)
    with pytest.raises(ExportError, match="--input-type int8 needs --quant int8"):
        convert_static(model, tmp_path / "f.tflite", [4], "float32", SPEC, SIZE, input_type="int8")


def test_loop_file_takes_camera_bytes_too(tiny, float32_loop, camera_frames, tmp_path):
    model, _ = tiny
    frames, images = camera_frames
    path = tmp_path / "u8.tflite"
    convert_tflite(model, path, "float32", SPEC, SIZE, input_type="uint8")
    for signature in ("outputs", "anytime", "encode"):  # every signature that takes the image
        extra = {"iterations": np.int32(3)} if signature == "anytime" else {}
        got = Interpreter(model_path=str(path)).get_signature_runner(signature)(image=frames[:1], **extra)
        want = Interpreter(model_path=str(float32_loop)).get_signature_runner(signature)(image=images[:1], **extra)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{signature} {key}")
    # int8: the bytes are the image's quantized values (pixel / 255: scale 1/255, zero point 0)
    calibration = calibration_sample("builtin", SIZE, count=4, seed=0)[0]
    convert_tflite(model, path, "int8", SPEC, SIZE, calibration, input_type="uint8")
    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_signature_runner("anytime").get_input_details()["image"]
    assert details["dtype"] == np.uint8 and details["quantization"] == (pytest.approx(1 / 255), 0)
    run = interpreter.get_signature_runner("anytime")
    got = np.concatenate([run(image=f[None], iterations=np.int32(4))["logits"] for f in frames]).argmax(-1)
    assert_agrees(got, keras_outputs(model, images)[3].argmax(-1), 0.95, 0.75, "output 4")
    cityscapes_like = dataclasses.replace(SPEC, normalization=(1 / 127.5, -1.0))
    with pytest.raises(ExportError, match="no integer zero point"):
        convert_tflite(model, tmp_path / "c.tflite", "int8", cityscapes_like, SIZE, calibration, input_type="uint8")


def test_static_check_refuses_a_loop_file(float32_loop):
    with pytest.raises(ExportError, match="tiny.tflite: signatures"):
        check_static(float32_loop, 4)


def test_cli_static_flavour_writes_one_file_per_n_and_names_bad_flags(tiny, tmp_path):
    _, model_path = tiny
    out = tmp_path / "s.tflite"
    result = convert_cli(model_path, "--flavor", "static", "--iterations", "1", "3", "--input-size", "64x64",
                         "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_n1.json", "s_n1.tflite", "s_n3.json", "s_n3.tflite"]
    cases = [(["--flavor", "static", "--iterations", "5"], "--iterations 5: expected outputs in 1..4"),
             (["--flavor", "static"], "--flavor static needs --format tflite and --iterations"),
             (["--iterations", "2"], "--iterations needs --flavor static")]
    for args, message in cases:
        result = convert_cli(model_path, *args, "--output", tmp_path / "bad.tflite")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-1500:])
    assert not list(tmp_path.glob("bad*"))
    (tmp_path / "bad_n3.json").mkdir()  # a file of output n is named with the --output given (was: as if given)
    result = convert_cli(model_path, "--flavor", "static", "--iterations", "1", "3", "--output", tmp_path / "bad.tflite")
    assert (result.returncode == 2 and f"--output {tmp_path / 'bad.tflite'} (bad_n3.tflite): "
            f"{tmp_path / 'bad_n3.json'} is a folder" in result.stderr), result.stderr[-1500:]
    assert not list(tmp_path.glob("bad*.tflite"))


def test_export_evaluation_checks_a_static_files_input_size(tiny, static_float32, capsys):
    """export/measure_accuracy.py reads a static file's input size from its one signature."""
    measure_accuracy = load_script("export", "measure_accuracy")
    _, model_path = tiny
    path = next(p for p in static_float32 if p.stem.endswith("_n2"))
    assert measure_accuracy.main([str(model_path), str(path), "--scale", "2", "--limit", "4"]) == 2
    assert f"error: {path} takes 64x64 images but --scale 2 gives builtin images of 32x32" in capsys.readouterr().err


def _resize_axes(path):
    """For each RESIZE_BILINEAR of a file's first subgraph: which of height and width it changes."""
    model = load(path)
    graph, codes = model.subgraphs[0], [op_name(c) for c in model.operatorCodes]
    shapes = [(list(graph.tensors[op.inputs[0]].shape), list(graph.tensors[op.outputs[0]].shape))
              for op in graph.operators if codes[op.opcodeIndex] == "RESIZE_BILINEAR"]
    return [tuple(a != b for a, b in zip(before[1:3], after[1:3])) for before, after in shapes]


def test_xnnpack_forms_replace_affines_and_int8_upsampling_keeping_the_numbers(tiny, camera_frames, tmp_path,
                                                                               monkeypatch):
    """Static files as the converter makes them and with `xnnpack_forms`: no per-channel MUL
    (a 1x1 DEPTHWISE_CONV_2D instead), int8 resizes along one axis at a time, the same outputs."""
    import itnet_keras.export.tflite as tflite

    model, _ = tiny
    frames, images = camera_frames
    calibration = calibration_sample("builtin", SIZE, count=8, seed=0)[0]
    want = keras_outputs(model, images)[1].argmax(-1)
    for name in ("channel_affines", "separable_upsampling"):
        monkeypatch.setattr(tflite, name, lambda data: data)
    for quant, input_type, pixels in (("float32", "float32", images), ("int8", "uint8", frames)):
        (plain, summary), = convert_static(model, tmp_path / f"{quant}.tflite", [2], quant, SPEC, SIZE,
                                           calibration if quant == "int8" else None, input_type=input_type).items()
        data = channel_affines(plain.read_bytes())
        forms = tmp_path / f"{quant}_forms.tflite"
        forms.write_bytes(separable_upsampling(data) if quant == "int8" else data)
        ops = check_static(forms, 2)["ops"]
        assert summary["ops"]["MUL"] >= 2 and "MUL" not in ops  # the data block's two max-pool branches
        assert ops["DEPTHWISE_CONV_2D"] >= summary["ops"]["DEPTHWISE_CONV_2D"] + 2
        assert (_resize_axes(forms) == _resize_axes(plain)) == (quant == "float32")  # a float resize stays one op
        assert all(sum(axes) == 1 for axes in _resize_axes(forms)) == (quant == "int8"), _resize_axes(forms)
        got, before = run_static(forms, pixels, 2, pixels.dtype), run_static(plain, pixels, 2, pixels.dtype)
        if quant == "float32":
            np.testing.assert_allclose(got, before, atol=1e-5)
        else:  # one rounding less in each affine, one more in the upsampling: as close to Keras
            assert np.mean(got.argmax(-1) == before.argmax(-1)) >= 0.98
            assert np.mean(got.argmax(-1) == want) >= np.mean(before.argmax(-1) == want) - 0.01
