"""`python -m itnet_keras.predict`: own images through a `.keras` or `.tflite` ItNet."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from itnet_keras import anytime, build_itnet
from itnet_keras import predict as predict_module
from itnet_keras.augment import normalize
from itnet_keras.builtin_data import builtin_arrays
from itnet_keras.datasets import get_spec
from itnet_keras.plots import class_colors

SPEC = get_spec("builtin")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = build_itnet("tiny")
    model(np.zeros((1, 64, 64, 3), np.float32))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def tflite_file(model_file):
    from itnet_keras.export.tflite import convert_tflite

    model, path = model_file
    out = path.with_name("tiny.tflite")
    convert_tflite(model, out, "float32", SPEC, (64, 64))
    return out


@pytest.fixture
def photos(tmp_path):
    """Three built-in images as PNG files, one of them 48x80 (not the .tflite file's size)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    images, _ = builtin_arrays("test", (64, 64), 3, 0)
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).save(folder / "b.png")
    Image.fromarray(np.asarray(Image.fromarray(images[2]).resize((80, 48)))).save(folder / "c.png")
    return folder


def predict(*args):
    return predict_module.main([str(a) for a in args])


def test_keras_model_on_a_folder_writes_masks_overlays_and_class_maps(model_file, photos, tmp_path):
    model, path = model_file
    out = tmp_path / "out"
    assert predict(path, photos, "--output", out, "--iterations", "2", "--raw") == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [i["image"] for i in summary["images"]] == [str(photos / n) for n in ("a.png", "b.png", "c.png")]
    assert summary["dataset"] == "builtin" and all(i["iterations"] == 2 for i in summary["images"])
    colors = class_colors(SPEC)
    # The .keras model runs each image at the pixel count it was trained at (64x64), aspect
    # ratio kept: a and b as they are, c (48x80) at 50x83, its mask resized back.
    assert [i["input_size"] for i in summary["images"]] == [[64, 64], [64, 64], [50, 83]]
    for name, size in (("a", (64, 64)), ("b", (64, 64)), ("c", (50, 83))):
        image = np.asarray(Image.open(photos / f"{name}.png"))
        classes = np.asarray(Image.open(out / f"{name}_classes.png"))
        logits = anytime(model, normalize(predict_module.resize(image, size), SPEC)[None], 2)
        expected = predict_module.resize(np.asarray(logits)[0].argmax(-1).astype(np.uint8), image.shape[:2], True)
        np.testing.assert_array_equal(classes, expected)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_mask.png")), colors[classes])
        overlay = np.asarray(Image.open(out / f"{name}_overlay.png")).astype(int)
        assert np.abs(overlay - (image.astype(int) + colors[classes]) // 2).max() <= 1
    assert not (tmp_path / "out2").exists()
    assert predict(path, photos / "a.png", "--output", tmp_path / "out2") == 0  # default: the last output
    assert not (tmp_path / "out2" / "a_classes.png").exists()  # class maps only with --raw
    assert json.loads((tmp_path / "out2" / "predictions.json").read_text())["images"][0]["iterations"] == 4


def test_a_portrait_photo_is_predicted_upright(model_file, tmp_path):
    """A phone's JPEG stored landscape with EXIF orientation 6 (turn 90 degrees clockwise to
    view): the model sees it upright, and the mask and overlay are upright, as viewers show it."""
    _, path = model_file
    images, _ = builtin_arrays("test", (48, 80), 1, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(images[0]).save(tmp_path / "portrait.jpg", exif=exif)
    assert predict(path, tmp_path / "portrait.jpg", "--output", tmp_path / "out") == 0
    upright = np.rot90(np.asarray(Image.open(tmp_path / "portrait.jpg")), k=-1)  # as stored, turned clockwise
    overlay = np.asarray(Image.open(tmp_path / "out" / "portrait_overlay.png")).astype(int)
    mask = np.asarray(Image.open(tmp_path / "out" / "portrait_mask.png")).astype(int)
    assert overlay.shape == mask.shape == (80, 48, 3)
    assert np.abs(overlay - (upright.astype(int) + mask) // 2).max() <= 1


def test_keras_model_runs_at_the_training_scale_or_the_input_size(model_file, photos, tmp_path, capsys):
    """Twice the training resolution runs at the training size; a run folder's --scale 2 halves
    that; --input-size overrides both."""
    model, path = model_file
    big = tmp_path / "big"
    big.mkdir()
    Image.open(photos / "c.png").resize((160, 96)).save(big / "c.png")  # 96x160: 2x the 48x80 photo

    def input_size(model_path, *flags):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert predict(model_path, big, "--output", out, *flags) == 0
        assert np.asarray(Image.open(out / "c_mask.png")).shape[:2] == (96, 160)  # masks at the image's size
        return json.loads((out / "predictions.json").read_text())["images"][0]["input_size"]

    assert input_size(path) == [50, 83]
    assert f"warning: {path} has no config.json beside it that records its training scale" in capsys.readouterr().err
    assert input_size(path, "--input-size", "96x160") == [96, 160]
    assert "warning" not in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(path.read_bytes())
    (run / "config.json").write_text(json.dumps({"fit": {"data": "builtin", "scale": 2}}))
    assert input_size(run / "best.keras") == [25, 41]  # 32x32 pixels: 64x64 at --scale 2
    (run / "config.json").write_text(json.dumps({"fit": {"data": "builtin", "scale": "2"}}))
    assert predict(run / "best.keras", big, "--output", tmp_path / "bad") == 2
    assert f"{run / 'config.json'} is damaged (ValueError: scale '2', expected a positive integer)" in \
        capsys.readouterr().err


def test_tflite_file_resizes_other_sizes_and_says_so(model_file, tflite_file, photos, tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "out"
    assert predict(tflite_file, f"{photos}/*.png", "--output", out, "--iterations", "3", "--raw") == 0
    err = capsys.readouterr().err
    assert "1 image(s) of 48x80 (c.png) resized to 64x64 (height x width), the only size tiny.tflite takes" in err
    run = Interpreter(model_path=str(tflite_file)).get_signature_runner("anytime")
    image = np.asarray(Image.open(photos / "a.png"))
    expected = run(image=normalize(image, SPEC)[None], iterations=np.int32(3))["logits"][0].argmax(-1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_classes.png")), expected)
    assert np.asarray(Image.open(out / "c_classes.png")).shape == (48, 80)  # resized back
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["images"][2]["input_size"] == [64, 64] and summary["images"][2]["size"] == [48, 80]


@pytest.mark.parametrize("quant, input_type", [("float32", "uint8"), ("int8", "int8")])
def test_tflite_file_taking_camera_bytes(model_file, tflite_file, photos, tmp_path, quant, input_type):
    """A file exported with --input-type uint8 gets the pixels as they are, not normalized floats;
    one with int8 (int8 files) the pixels minus 128."""
    from ai_edge_litert.interpreter import Interpreter

    from itnet_keras.export.tflite import calibration_sample, convert_tflite

    model, path = model_file
    bytes_file = tmp_path / f"tiny_{quant}_{input_type}.tflite"
    calibration = calibration_sample("builtin", (64, 64), count=4)[0] if quant == "int8" else None
    convert_tflite(model, bytes_file, quant, SPEC, (64, 64), calibration, input_type=input_type)
    out = tmp_path / "out"
    assert predict(bytes_file, photos / "a.png", "--output", out, "--iterations", "3", "--raw") == 0
    image = np.asarray(Image.open(photos / "a.png"))
    run = Interpreter(model_path=str(bytes_file)).get_signature_runner("anytime")
    given = image if input_type == "uint8" else (image.astype(np.int16) - 128).astype(np.int8)
    expected = run(image=given[None], iterations=np.int32(3))["logits"][0].argmax(-1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_classes.png")), expected)
    if quant == "float32":  # the same classes as the float-input file
        run = Interpreter(model_path=str(tflite_file)).get_signature_runner("anytime")
        floats = run(image=normalize(image, SPEC)[None], iterations=np.int32(3))["logits"][0].argmax(-1)
        np.testing.assert_array_equal(expected, floats)


def test_deadline_picks_the_largest_output_that_fits():
    times = {1: 4.0, 2: 7.5, 3: 11.0}
    assert predict_module.iterations_for_deadline(times, 8.0) == 2
    assert predict_module.iterations_for_deadline(times, 11.0) == 3
    with pytest.raises(predict_module.PredictError, match=r"--deadline-ms 3: output 1 alone takes 4.0 ms"):
        predict_module.iterations_for_deadline(times, 3.0)


def test_deadline_is_measured_on_this_machine(model_file, photos, tmp_path, capsys):
    _, path = model_file
    out = tmp_path / "out"
    assert predict(path, photos / "a.png", photos / "b.png", "--deadline-ms", "100000", "--output", out) == 0
    summary = json.loads((out / "predictions.json").read_text())
    measured = summary["deadline"]["64x64"]["measured_ms"]
    assert list(measured) == ["1", "2", "3", "4"] and all(ms > 0 for ms in measured.values())
    assert summary["deadline"]["64x64"]["iterations"] == 4
    assert [i["iterations"] for i in summary["images"]] == [4, 4]
    assert "deadline 100000 ms -> output 4" in capsys.readouterr().out
    assert predict(path, photos / "a.png", "--deadline-ms", "0.001", "--output", tmp_path / "new" / "masks") == 2
    assert "--deadline-ms 0.001: output 1 alone takes" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the folders it made, removed with nothing in them (was: new/ kept)


def test_an_output_folder_it_cannot_write_into_is_named(model_file, photos, tmp_path, capsys, unwritable_folders):
    """Found before any work (was: the permission error of a hidden temporary mask file)."""
    out = tmp_path / "made" / "out"
    assert predict(model_file[1], photos / "a.png", "--output", out) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --output {out}: cannot write there (Permission denied)"
    assert not (tmp_path / "made").exists()


def test_a_deadline_missed_at_a_later_size_stops_before_any_mask(model_file, photos, tmp_path, capsys, monkeypatch):
    """Every input size is timed before the first mask (was: a.png's masks written, then the
    error for c.png's size, no predictions.json); the error names the size and the image."""
    _, path = model_file
    monkeypatch.setattr(predict_module, "time_outputs",
                        lambda predictor, image, deadline_ms: {1: 1.0 if image.shape[1:3] == (64, 64) else 50.0})
    out = tmp_path / "out"
    assert predict(path, photos / "a.png", photos / "c.png", "--deadline-ms", "10", "--output", out) == 2
    err = capsys.readouterr().err
    assert "error: --deadline-ms 10: output 1 alone takes 50.0 ms on this machine at 50x83" in err
    assert f"measured on {photos / 'c.png'}" in err
    assert not out.exists()


def test_keras_predictions_are_compiled_once_per_size(model_file, photos, monkeypatch):
    """`.keras` outputs run through one compiled function per input size, whatever n (was:
    eager calls, several times slower, so that --deadline-ms chose too few iterations; on JAX
    the loop was traced again at every call), and equal the model's anytime outputs."""
    from itnet_keras import predictors

    model, path = model_file
    traced = []
    monkeypatch.setattr(predictors, "anytime", lambda *args: traced.append(1) or anytime(*args))
    predictor = predictors.KerasPredictor(path, data="builtin")
    pixels = np.asarray(Image.open(photos / "a.png"))[None]
    for n in (1, 2, 3, 4, 2):
        np.testing.assert_allclose(predictor.logits(pixels, n), anytime(model, normalize(pixels, SPEC), n), atol=1e-5)
    assert len(traced) == 1


def test_one_file_named_twice_is_predicted_once(model_file, photos, tmp_path):
    out = tmp_path / "out"
    assert predict(model_file[1], photos / "a.png", photos / ".." / photos.name / "a.png", "--output", out) == 0
    assert [i["image"] for i in json.loads((out / "predictions.json").read_text())["images"]] == [str(photos / "a.png")]


@pytest.mark.parametrize("make_args, culprit", [
    (lambda m, p, t: [m, p, t / "bad" / "broken.png"], "cannot read image bad/broken.png"),
    (lambda m, p, t: [m, p / "nothing.png"], "image {p}/nothing.png does not exist"),
    (lambda m, p, t: [m, f"{p}/*.jpg"], "pattern '{p}/*.jpg' matches no files"),
    (lambda m, p, t: [m, p, "--iterations", "5"], "--iterations 5: {m} has outputs 1..4"),
    (lambda m, p, t: [t / "model.h5", p], "model {t}/model.h5: expected a .keras or a .tflite file"),
    (lambda m, p, t: [m, p, "--data", "camvid"], "--data camvid: 11 classes, but {m} has 4"),
    # found before any mask is written, with the image's own size (was: after a.png .. c.png's
    # masks, as "is 6x640", the size it would run at)
    (lambda m, p, t: [m, p, t / "bad" / "wide.png"],
     "image {t}/bad/wide.png (10x1000, height x width) runs at 6x640, scaled to the training images' pixel count"),
])
def test_bad_input_gives_one_clear_error(model_file, photos, tmp_path, capsys, make_args, culprit):
    _, path = model_file
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 1000, 3), np.uint8)).save(tmp_path / "bad" / "wide.png")
    (tmp_path / "model.h5").write_bytes(b"")
    args = make_args(path, photos, tmp_path)
    assert predict(*args, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit.format(m=path, p=photos, t=tmp_path) in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_damaged_records_beside_the_model_are_named(model_file, tflite_file, photos, tmp_path, capsys):
    """A run's config.json and a .tflite file's sidecar give the dataset: damaged, they are named."""
    run, exported = tmp_path / "run", tmp_path / "exported"
    run.mkdir(), exported.mkdir()
    (run / "best.keras").write_bytes(model_file[1].read_bytes())
    (run / "config.json").write_text("{}")
    (exported / "tiny.tflite").write_bytes(tflite_file.read_bytes())
    (exported / "tiny.json").write_text(json.dumps({"dataset": "mars", "num_iterations": 4}))
    assert predict(run / "best.keras", photos, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'} is damaged (KeyError: 'fit'): it should hold the training configuration" in err
    assert predict(run / "best.keras", photos, "--data", "builtin", "--output", tmp_path / "out") == 2  # its scale
    assert f"{run / 'config.json'} is damaged (KeyError: 'fit')" in capsys.readouterr().err
    assert predict(run / "best.keras", photos, "--data", "builtin", "--input-size", "64x64",
                   "--output", tmp_path / "out") == 0
    assert predict(exported / "tiny.tflite", photos, "--output", tmp_path / "out2") == 2
    assert f"{exported / 'tiny.json'}: unknown dataset 'mars'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(run / "best.keras", photos, "--deadline-ms", "nan", "--output", tmp_path / "out3")
    assert "argument --deadline-ms: 'nan': expected a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_a_dataset_that_does_not_fit_the_model_is_named_where_it_came_from(model_file, tflite_file, photos,
                                                                           tmp_path, capsys):
    """A run's config.json naming another dataset is blamed, not a --data never passed; a
    .tflite file's dataset is its sidecar's, and a --data that differs is refused (was: ignored)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(model_file[1].read_bytes())
    (run / "config.json").write_text(json.dumps({"fit": {"data": "camvid", "scale": 1}}))
    assert predict(run / "best.keras", photos, "--output", tmp_path / "out") == 2
    assert (f"error: {run / 'config.json'} records --data camvid: 11 classes, but {run / 'best.keras'} has 4: "
            "pass --data") in capsys.readouterr().err
    assert predict(run / "best.keras", photos, "--data", "builtin", "--output", tmp_path / "out") == 0
    assert predict(tflite_file, photos, "--data", "camvid", "--output", tmp_path / "out2") == 2
    assert "error: --data camvid: tiny.tflite was exported for builtin" in capsys.readouterr().err
    assert predict(tflite_file, photos, "--data", "builtin", "--output", tmp_path / "out2") == 0


def test_a_model_of_a_class_count_no_dataset_has_needs_data(photos, tmp_path, capsys):
    from itnet_keras import build_itnet

    five = tmp_path / "five.keras"
    build_itnet("tiny", num_classes=5).save(five)
    assert predict(five, photos, "--output", tmp_path / "out") == 2
    assert f"error: {five} has 5 classes, which names no single dataset: pass --data" in capsys.readouterr().err


def test_a_static_flavour_file_is_named_as_such(model_file, photos, tmp_path, capsys):
    """`predict` runs a loop file's `anytime` signature: a static file (one output) is refused
    by what it is and what to export instead (was: LiteRT's `Invalid signature_key`)."""
    from itnet_keras.export.tflite import convert_static

    model, _ = model_file
    (path,) = convert_static(model, tmp_path / "tiny.tflite", [2], spec=SPEC, input_size=(64, 64))
    assert predict(path, photos, "--output", tmp_path / "out") == 2
    assert (f"error: {path} has no `anytime` signature, only output_2: a static-flavour file, of one output; "
            "predict runs the loop flavour") in capsys.readouterr().err


def test_tflite_input_size_cannot_change(tflite_file, photos, tmp_path, capsys):
    assert predict(tflite_file, photos, "--input-size", "32x32", "--output", tmp_path / "out") == 2
    assert "--input-size 32x32: tiny.tflite takes 64x64 images only" in capsys.readouterr().err


def test_same_names_from_two_folders_are_refused(model_file, photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((photos / "a.png").read_bytes())
    assert predict(model_file[1], photos / "a.png", other / "a.png", "--output", tmp_path / "out") == 2
    assert "would write the same masks (a_mask.png)" in capsys.readouterr().err


def test_command_prints_no_startup_logs(tflite_file, photos, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-m", "itnet_keras.predict", str(tflite_file), str(photos),
                             "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "note: 1 image(s) of 48x80 (c.png) resized to 64x64 (height x width), the only size tiny.tflite takes; "
        "their masks are resized back"]
    assert result.stdout.splitlines()[-1] == f"3 image(s) through output 4; masks in {tmp_path / 'out'}"


def test_keras_models_predict_without_litert_and_tflite_files_say_what_to_install(model_file, tflite_file, photos,
                                                                                tmp_path):
    """LiteRT is the optional `export` extra: without it a .keras model predicts as before, and
    a .tflite file gets one error naming the install (was: a ModuleNotFoundError traceback for
    either, from the quiet startup's import)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    no_litert = (
        "import importlib.abc, runpy, sys\n"
        "class NoLiteRT(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'ai_edge_litert':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoLiteRT())\n"
        "runpy.run_module('itnet_keras.predict', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for model, out in ((model_file[1], "keras"), (tflite_file, "tflite")):
        result = subprocess.run([sys.executable, "-c", no_litert, str(model), str(photos), "--data", "builtin",
                                 "--output", str(tmp_path / out)], env=env, capture_output=True, text=True)
        if out == "keras":
            assert result.returncode == 0, result.stderr[-2000:]
            assert len(list((tmp_path / out).glob("*_mask.png"))) == 3
        else:
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
            assert result.stderr.startswith(f"error: {tflite_file}: a .tflite file runs on LiteRT, which is not "
                                            "installed"), result.stderr
            assert 'pip install -e ".[export]"' in result.stderr
