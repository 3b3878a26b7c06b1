"""The phone-ready `.tflite` export, checked with the LiteRT interpreter, and the compression report's pieces.

Tiny untrained models and random pixels keep the file fast: each conversion takes about half a second.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd import compression, export
from tfkd.data import Split
from tfkd.models import lenet_teacher, mlp_student

# Max abs logit difference against Keras on random pixels (logits span about 2 here); float32 is the contract,
# the others are loose bounds on quantization error, still far below what a wrong scaling would give.
TOLERANCE = {"none": 1e-4, "float16": 1e-2, "dynamic": 0.05, "int8": 0.1}


def _student(units=16, seed=0):
    keras.utils.set_random_seed(seed)
    return mlp_student(hidden_units=(units,), name=f"student{units}")


def _pixels(rows=64, seed=0):
    # uint8 like tfkd.data.Split.images; 64 random images contain both 0 and 255.
    return np.random.default_rng(seed).integers(0, 256, (rows, 28, 28, 1), dtype=np.uint8)


def _keras_logits(model, pixels):
    # tfkd feeds models x / 255; the exported file does that division itself.
    return np.asarray(model(pixels.astype(np.float32) / 255.0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny student exported once per quantization: `(model, pixels, {quantization: path})`."""
    model, pixels = _student(), _pixels()
    directory = tmp_path_factory.mktemp("exported")
    paths = {q: export.export_tflite(model, directory / f"student_{q}.tflite", q, representative_data=pixels)
             for q in export.QUANTIZATIONS}
    return model, pixels, paths


@pytest.mark.parametrize("quantization", export.QUANTIZATIONS)
def test_litert_runs_each_file_and_agrees_with_keras(exported, quantization):
    model, pixels, paths = exported
    expected = _keras_logits(model, pixels)
    logits = export.tflite_predict(paths[quantization], pixels)
    assert logits.shape == (len(pixels), 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE[quantization])
    agreement = np.mean(np.argmax(logits, -1) == np.argmax(expected, -1))
    assert agreement >= (1.0 if quantization == "none" else 0.9)


@pytest.mark.parametrize("quantization", export.QUANTIZATIONS)
def test_signature_is_raw_pixels_in_logits_out_with_builtin_ops_only(exported, quantization):
    info = export.describe_tflite(exported[2][quantization])
    dtype = "int8" if quantization == "int8" else "float32"
    assert info["input"]["shape"] == [1, 28, 28, 1] and info["input"]["dtype"] == dtype
    assert export.INPUT_NAME in info["input"]["name"]
    assert info["output"]["shape"] == [1, 10] and info["output"]["dtype"] == dtype
    assert not [op for op in info["operators"] if op.startswith("CUSTOM") or "Flex" in op], info["operators"]
    # The MUL is the x / 255 scaling inside the file; FULLY_CONNECTED the student's dense layers.
    assert {"MUL", "FULLY_CONNECTED"} <= set(info["operators"])


def test_int8_input_is_pixel_minus_128_and_quantized_files_are_smaller(exported):
    model, pixels, paths = exported
    info = export.describe_tflite(paths["int8"])
    # Calibrated on 0..255 pixels, the documented input quantization is exact: q = pixel - 128.
    assert (info["input"]["scale"], info["input"]["zero_point"]) == (1.0, -128)
    assert info["output"]["scale"] > 0
    size = {q: os.path.getsize(path) for q, path in paths.items()}
    float_weight_bytes = 4 * model.count_params()
    assert size["none"] >= float_weight_bytes
    assert size["float16"] < 0.6 * size["none"]
    assert size["dynamic"] < 0.35 * size["none"] and size["int8"] < 0.35 * size["none"]


def test_int8_calibrates_the_same_from_a_dataset_of_image_label_batches(exported, tmp_path):
    model, pixels, paths = exported
    labels = np.zeros(len(pixels), np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(16)
    path = export.export_tflite(model, tmp_path / "from_dataset.tflite", "int8", representative_data=dataset)
    from_dataset, from_array = export.describe_tflite(path), export.describe_tflite(paths["int8"])
    for key in ("input", "output"):
        assert from_dataset[key]["scale"] == pytest.approx(from_array[key]["scale"])
        assert from_dataset[key]["zero_point"] == from_array[key]["zero_point"]


def test_evaluate_tflite_counts_errors_over_a_split(exported):
    model, pixels, paths = exported
    predictions = np.argmax(_keras_logits(model, pixels), -1)
    assert export.evaluate_tflite(paths["none"], pixels, predictions) == {
        "examples": len(pixels), "errors": 0, "accuracy": 1.0}
    wrong = export.evaluate_tflite(paths["none"], pixels, (predictions + 1) % 10)
    assert wrong["errors"] == len(pixels) and wrong["accuracy"] == 0.0


def test_pixels_already_divided_by_255_are_refused(exported):
    model, pixels, paths = exported
    scaled = pixels.astype(np.float32) / 255.0
    with pytest.raises(ValueError, match=r"raw pixels in 0\.\.255"):
        export.tflite_predict(paths["none"], scaled)
    with pytest.raises(ValueError, match="representative_data must be raw pixels"):
        export.export_tflite(model, "unused.tflite", "int8", representative_data=scaled)


def test_distiller_exports_its_student_never_its_teacher(tmp_path):
    teacher, student = lenet_teacher(), _student(seed=1)  # 431,080 parameters against 12,730
    distiller = tfkd.Distiller(student, teacher, sigma=0.5, seed=0)
    from_distiller = export.export_tflite(distiller, tmp_path / "distiller.tflite")
    from_student = export.export_tflite(student, tmp_path / "student.tflite")
    size = os.path.getsize(from_distiller)
    assert abs(size - os.path.getsize(from_student)) < 1024
    assert size < teacher.count_params()  # bytes: a quarter of the teacher's float32 weights
    pixels = _pixels(8)
    np.testing.assert_allclose(export.tflite_predict(from_distiller, pixels), _keras_logits(student, pixels),
                               rtol=0, atol=1e-4)
    assert "CONV_2D" not in export.operator_names(from_distiller)


def test_cli_converts_a_saved_distiller_to_its_student(tmp_path, capsys):
    student = _student(seed=2)
    tfkd.Distiller(student, _student(32, seed=3), sigma=0.5, seed=0).save(tmp_path / "distiller.keras")
    out = tmp_path / "phone" / "digits.tflite"
    assert export.main([str(tmp_path / "distiller.keras"), "--quantization", "none", "--out", str(out)]) == 0
    assert "[1, 28, 28, 1] float32" in capsys.readouterr().out
    pixels = _pixels(8)
    np.testing.assert_allclose(export.tflite_predict(out, pixels), _keras_logits(student, pixels), rtol=0,
                               atol=1e-4)
    assert export.main([str(tmp_path / "distiller.keras"), "--quantization", "int4"]) == 2
    assert "got 'int4'" in capsys.readouterr().err


def test_export_student_files_writes_beside_student_keras_once(tmp_path):
    _student().save(tmp_path / "student.keras")
    paths = export.export_student_files(tmp_path, ["none", "dynamic"])
    assert [os.path.basename(p) for p in paths] == ["student_none.tflite", "student_dynamic.tflite"]
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    assert export.export_student_files(tmp_path, ["none", "dynamic"]) == paths
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps  # up to date: not converted again
    with pytest.raises(ValueError, match="student.keras"):
        export.export_student_files(tmp_path / "missing", ["none"])


def _flex_only_model():
    # MatrixDeterminant has no LiteRT builtin: converting it needs the Flex (SELECT_TF_OPS) runtime.
    inputs = keras.Input((2, 2))
    return keras.Model(inputs, keras.layers.Lambda(lambda t: tf.linalg.det(t))(inputs))


def test_flex_ops_are_detected_and_refused_and_a_failed_export_keeps_the_old_file(tmp_path):
    # Keras' own default allows Flex ops, and operator_names sees them: the builtin check above can fail.
    permissive = tmp_path / "keras_default.tflite"
    _flex_only_model().export(str(permissive), format="litert", verbose=False)
    assert "CUSTOM:FlexMatrixDeterminant" in export.operator_names(permissive)

    target = tmp_path / "model.tflite"
    target.write_bytes(b"previous file")
    with pytest.raises(ValueError, match=r"no LiteRT builtin \(MatrixDeterminant\)"):
        export.export_tflite(_flex_only_model(), target)
    assert target.read_bytes() == b"previous file"
    assert sorted(os.listdir(tmp_path)) == ["keras_default.tflite", "model.tflite"]  # no temporary left


@pytest.mark.parametrize("quantization", ["int4", "INT8", "", "fp16"])
def test_unknown_quantization_names_the_value_and_the_allowed_ones(tmp_path, quantization):
    with pytest.raises(ValueError, match=f"got {quantization!r}") as error:
        export.export_tflite(_student(), tmp_path / "x.tflite", quantization)
    assert all(repr(q) in str(error.value) for q in export.QUANTIZATIONS)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.tflite").exists()


def test_int8_without_representative_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'int8' needs representative_data.*got representative_data=None"):
        export.export_tflite(_student(), tmp_path / "x.tflite", "int8")
    assert os.listdir(tmp_path) == []


def test_unwritable_paths_are_refused_before_converting(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    for path in (tmp_path / "a_file" / "x.tflite", tmp_path):
        with pytest.raises(ValueError, match=f"got {str(path)!r}"):
            export.export_tflite(_student(), path)
    assert os.listdir(tmp_path) == ["a_file"]


def test_parse_quantizations():
    assert export.parse_quantizations("none, int8,none") == ["none", "int8"]
    for text in ("", "none,int4"):
        with pytest.raises(ValueError, match="got '"):
            export.parse_quantizations(text)


def test_macs_are_counted_from_the_layer_shapes():
    # LeNet: conv1 24*24*20*5*5*1 + conv2 8*8*50*5*5*20 + fc500 800*500 + logits 500*10.
    assert compression.count_macs(lenet_teacher()) == 288_000 + 1_600_000 + 400_000 + 5_000
    # FC800-FC800: 784*800 + 800*800 + 800*10.
    assert compression.count_macs(mlp_student()) == 627_200 + 640_000 + 8_000
    assert len(compression.weight_layers(lenet_teacher())) == 4
    assert len(compression.weight_layers(mlp_student())) == 3
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="BatchNormalization"):
        compression.count_macs(keras.Model(inputs, keras.layers.BatchNormalization()(inputs)))


def test_compression_report_measures_both_models_and_says_where_the_student_is_not_smaller(tmp_path):
    # A "student" with more parameters than its "teacher", as FC800-FC800 against LeNet.
    _student(8, seed=4).save(tmp_path / "teacher.keras")
    _student(24, seed=5).save(tmp_path / "student.keras")
    test = Split(_pixels(16, seed=1), np.arange(16) % 10)
    report = compression.compare(tmp_path / "teacher.keras", tmp_path / "student.keras", test, _pixels(32),
                                 runs=5, warmup=1, tflite_dir=str(tmp_path / "tflite"))
    json.dumps(report)  # the JSON beside the Markdown must be writable
    assert sorted(os.listdir(tmp_path / "tflite")) == sorted(
        f"{name}_{q}.tflite" for name in ("teacher", "student") for q in export.QUANTIZATIONS)
    for name in ("teacher", "student"):
        assert report["checks"][name]["float32_within_tolerance"] and report["checks"][name]["builtin_ops_only"]
        assert set(report[name]["tflite"]) == set(export.QUANTIZATIONS)
        assert report[name]["tflite"]["none"]["latency"]["median_ms"] > 0
    assert report["student"]["parameters"] == 784 * 24 + 24 + 24 * 10 + 10
    markdown = compression.render_markdown(report, "python -m tfkd.compression --test")
    assert "**Not smaller in parameters or storage.**" in markdown
    assert "`python -m tfkd.compression --test`" in markdown and report["settings"]["code_version"] in markdown
