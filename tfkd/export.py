"""Phone-ready LiteRT (`.tflite`) files of a trained model, and the LiteRT interpreter runs that verify them.

The file's contract, which an app relies on:
  - builtin LiteRT ops only (no Flex / custom ops): the stock LiteRT runtime on Android or iOS runs it.
  - one signature, `serving_default`, one input named `pixels` of fixed shape `[1, 28, 28, 1]` (batch 1,
    height, width, one grey channel), one output of shape `[1, 10]`.
  - input: raw grey pixels in 0..255 as MNIST stores them (0 = background, 255 = ink), row-major. The division
    by 255 that tfkd's data pipeline applies (`tfkd.data.scale_images`) is inside the file, as its first op.
  - output: logits, not probabilities; `argmax` is the digit, a softmax gives probabilities.

Quantizations (`QUANTIZATIONS`):
  - `none`: float32 weights, input and output.
  - `float16`: float16 weights (about half the bytes), float32 input and output.
  - `dynamic`: int8 weights of the large layers, float32 input and output; activations are quantized on the fly.
  - `int8`: int8 weights and activations, calibrated on `representative_data`, and int8 input and output.
    Input: `q = round(pixel / scale) + zero_point` with the input tensor's `(scale, zero_point)`; calibrated on
    MNIST pixels these are `(1.0, -128)`, so `q = pixel - 128`, exact for 0..255. Output:
    `logits = (q - zero_point) * scale` with the output tensor's parameters (`describe_tflite` lists both).

  export_tflite(student, "student_int8.tflite", "int8", representative_data=mnist.train.images[:500])
  python -m tfkd.export saved_models/<run>/student.keras --quantization int8 --out student_int8.tflite
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import artifacts
from tfkd.distiller import split_inputs  # importing tfkd.distiller also registers Distiller for load_model

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
INPUT_NAME = "pixels"
BATCH_SIZE = 1  # a phone classifies one image per call; a fixed shape keeps the graph free of shape ops
PIXEL_SCALE = 1.0 / 255.0  # the models were trained on pixels / 255 (tfkd.data.scale_images)
CALIBRATION_SIZE = 500  # MNIST training images for int8 calibration: a few hundred cover the pixel range


def _allowed(values: Iterable[str]) -> str:
    return ", ".join(repr(value) for value in values)


def check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {_allowed(QUANTIZATIONS)}, got {quantization!r}")
    return quantization


def parse_quantizations(text: str) -> list[str]:
    """`"none,int8"` -> `["none", "int8"]`; raises ValueError naming the first value that is not allowed."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    if not values:
        raise ValueError(f"expected a comma-separated list of {_allowed(QUANTIZATIONS)}, got {text!r}")
    for value in values:
        check_quantization(value)
    return list(dict.fromkeys(values))


def exported_model(model: keras.Model) -> keras.Model:
    """The model an export contains: a Distiller's student (never its teacher), otherwise `model` itself."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


def load_for_export(path: str | os.PathLike) -> keras.Model:
    """Loads a `.keras` file (a model, or a Distiller) and returns the model to export."""
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot load a Keras model from {str(path)!r}: {first_line}") from None
    return exported_model(model)


def _image_shape(model: keras.Model) -> tuple[int, ...]:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or any(d is None for d in inputs[0].shape[1:]):
        raise ValueError(f"export_tflite needs a built model with one fixed-shape image input, got model "
                         f"{model.name!r} with inputs {inputs!r}")
    return tuple(int(d) for d in inputs[0].shape[1:])


def phone_model(model: keras.Model) -> keras.Model:
    """`Rescaling(1/255)` then `model`: raw pixels `[n, 28, 28, 1]` in 0..255 -> `model`'s logits `[n, 10]`."""
    model = exported_model(model)
    pixels = keras.Input(_image_shape(model), name=INPUT_NAME)
    logits = model(keras.layers.Rescaling(PIXEL_SCALE, name="pixels_to_unit_range")(pixels))
    return keras.Model(pixels, logits, name=f"{model.name}_phone")


def check_raw_pixels(images: np.ndarray, argument: str) -> None:
    """Raises ValueError unless `images` look like raw 0..255 pixels (the exported file's input)."""
    if images.size == 0:
        raise ValueError(f"{argument} must hold at least one image, got an empty array of shape {images.shape}")
    low, high = float(np.min(images)), float(np.max(images))
    # Pixels already divided by 255 would be divided again inside the file: fractional values all <= 1 give
    # them away, whereas raw pixels are whole numbers (an all-black image is fine).
    scaled = high <= 1.0 and not np.array_equal(images, np.round(images))
    if low < 0 or high > 255 or scaled:
        raise ValueError(f"{argument} must be raw pixels in 0..255 (the exported model divides by 255 itself), "
                         f"got values in [{low:g}, {high:g}]: pass uint8 images such as tfkd.data.Split.images, "
                         "not the output of tfkd.data.make_dataset")


def _calibration_samples(representative_data, image_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Single images `[1, *image_shape]` float32 from an array `[n, *image_shape]` or a `tf.data.Dataset` of
    images or of `(images, labels)` tuples, batched or not."""
    if isinstance(representative_data, tf.data.Dataset):
        batches = []
        for element in representative_data.as_numpy_iterator():
            if isinstance(element, tuple):
                element = element[0]  # (images, labels) or (images, labels, sample weights)
            batches.append(np.asarray(split_inputs(element)[0]))
    else:
        batches = [np.asarray(representative_data)]
    samples = []
    for batch in batches:
        if batch.ndim == len(image_shape):
            batch = batch[np.newaxis]
        if tuple(batch.shape[1:]) != image_shape:
            raise ValueError(f"representative_data must hold images of shape [n, {', '.join(map(str, image_shape))}]"
                             f", got a batch of shape {list(batch.shape)}")
        batch = batch.astype(np.float32)
        samples.extend(batch[i:i + 1] for i in range(len(batch)))
    if not samples:
        raise ValueError("representative_data must hold at least one image, got none")
    check_raw_pixels(np.concatenate(samples), "representative_data")
    return samples


def _converter_options(quantization: str, calibration: list[np.ndarray] | None) -> dict:
    """TFLiteConverter attributes for `quantization`; Keras' LiteRT exporter sets them on its converter."""
    # Builtins only: Keras' default also allows SELECT_TF_OPS (Flex), which stock phone runtimes lack.
    builtins = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    optimize = [tf.lite.Optimize.DEFAULT]
    if quantization == "none":
        return {"target_spec": builtins}
    if quantization == "float16":
        return {"optimizations": optimize, "target_spec": {**builtins, "supported_types": [tf.float16]}}
    if quantization == "dynamic":
        return {"optimizations": optimize, "target_spec": builtins}
    return {
        "optimizations": optimize,
        "representative_dataset": lambda: ([sample] for sample in calibration),
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "inference_input_type": tf.int8,
        "inference_output_type": tf.int8,
    }


@contextlib.contextmanager
def _atomic_tflite(path: str):
    if os.path.isdir(path):
        raise ValueError(f"path must be a writable .tflite file path, got {path!r}, which is a directory")
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"path must be a writable .tflite file path, got {path!r}: {str(folder)!r} is a file")
    with contextlib.ExitStack() as stack:
        try:
            temporary = stack.enter_context(artifacts.atomic_path(path))
        except OSError as error:
            raise ValueError(f"path must be a writable .tflite file path, got {path!r} ({error.strerror})") from None
        # Keras' exporter insists on the ".tflite" ending, so it writes beside the temporary file first.
        converted = temporary + ".tflite"
        try:
            yield converted
            os.replace(converted, temporary)
        finally:
            if os.path.exists(converted):
                os.remove(converted)


def export_tflite(model: keras.Model, path: str | os.PathLike, quantization: str = "none",
                  representative_data=None) -> str:
    """Writes `model` (a Distiller: its student only) as a phone-ready `.tflite` file; returns `path`.

    Args:
      model: a built Keras model taking `[n, 28, 28, 1]` images in [0, 1] and returning logits `[n, 10]`.
      path: the file to write, atomically (a temporary file beside it, then `os.replace`).
      quantization: one of `QUANTIZATIONS` (see the module docstring).
      representative_data: int8 only: raw 0..255 images `[n, 28, 28, 1]` (uint8 or float), or a
        `tf.data.Dataset` of such images or of `(images, labels)` batches; every image is used to calibrate.

    The file takes raw pixels `[1, 28, 28, 1]` in 0..255 and returns logits `[1, 10]` (module docstring).
    Raises ValueError for an unknown quantization, int8 without data, a path that cannot be written, or a model
    that needs ops outside the LiteRT builtin set; an existing file at `path` is left as it was.
    """
    check_quantization(quantization)
    if quantization == "int8" and representative_data is None:
        raise ValueError("quantization 'int8' needs representative_data (raw 0..255 images to calibrate on), "
                         "got representative_data=None")
    path = os.fspath(path)
    model = exported_model(model)
    wrapper = phone_model(model)
    image_shape = _image_shape(model)
    calibration = _calibration_samples(representative_data, image_shape) if quantization == "int8" else None
    signature = [tf.TensorSpec((BATCH_SIZE, *image_shape), tf.float32, name=INPUT_NAME)]
    with _atomic_tflite(path) as temporary:
        try:
            wrapper.export(temporary, format="litert", input_signature=signature, verbose=False,
                           **_converter_options(quantization, calibration))
        except Exception as error:
            # The converter's message is pages of MLIR; the line naming the missing ops is the useful part.
            missing = re.search(r"(?:TF Select|Flex) ops: ([^\n]+)", str(error))
            if missing is None:
                raise
            raise ValueError(f"model {model.name!r} needs TensorFlow ops that have no LiteRT builtin "
                             f"({missing.group(1).strip()}); stock phone runtimes lack the Flex ops that would "
                             "run them") from error
    logging.info("exported %s (%d parameters, quantization %s) to %s: %d bytes", model.name, model.count_params(),
                 quantization, path, os.path.getsize(path))
    return path


def operator_names(path: str | os.PathLike) -> list[str]:
    """The operator codes a `.tflite` file declares, read from its flatbuffer: builtin names such as
    `FULLY_CONNECTED`, and `CUSTOM:<code>` for custom ops (Flex ops appear as `CUSTOM:Flex...`)."""
    # Imported here, as in load_interpreter: ai-edge-litert is the optional extra tfkd[export], and
    # converting needs TensorFlow only.
    from ai_edge_litert import schema_py_generated as tflite_schema

    builtin_names = {code: name for name, code in vars(tflite_schema.BuiltinOperator).items() if name.isupper()}
    model = tflite_schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes above 127 live only in `builtin_code`; older files only fill the deprecated int8 field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite_schema.BuiltinOperator.CUSTOM:
            names.append(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            names.append(builtin_names.get(builtin, f"UNKNOWN:{builtin}"))
    return names


def load_interpreter(path: str | os.PathLike, num_threads: int = 1):
    """A LiteRT `Interpreter` (ai-edge-litert, the runtime phones ship) with its tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def describe_tflite(path: str | os.PathLike) -> dict:
    """Shape, dtype and `(scale, zero_point)` of the file's input and output, its ops and its size in bytes."""
    interpreter = load_interpreter(path)

    def tensor(detail):
        scale, zero_point = detail["quantization"]
        return {"name": detail["name"], "shape": [int(d) for d in detail["shape_signature"]],
                "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}

    return {"input": tensor(interpreter.get_input_details()[0]),
            "output": tensor(interpreter.get_output_details()[0]),
            "operators": sorted(set(operator_names(path))), "bytes": os.path.getsize(path)}


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values -> the dtype of an interpreter tensor (`detail`), with its `(scale, zero_point)` if integer."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Values of an interpreter tensor (`detail`) -> float32, undoing its `(scale, zero_point)` if integer."""
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_predict(path: str | os.PathLike, images, num_threads: int = 1) -> np.ndarray:
    """Runs the LiteRT interpreter on each image as an app would (one image per `invoke`).

    Args:
      path: a file written by `export_tflite`.
      images: raw pixels `[n, 28, 28, 1]` in 0..255, uint8 or float; int8 files get them quantized with the
        file's input parameters.
    Returns float32 logits `[n, 10]` (int8 outputs dequantized with the file's output parameters).
    """
    images = np.asarray(images)
    check_raw_pixels(images, "images")
    interpreter = load_interpreter(path, num_threads)
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if tuple(images.shape[1:]) != tuple(input_detail["shape"][1:]):
        raise ValueError(f"images must have shape [n, {', '.join(map(str, input_detail['shape'][1:]))}], "
                         f"got {list(images.shape)}")
    inputs = quantize(images.astype(np.float32), input_detail)
    outputs = np.empty((len(images), *output_detail["shape"][1:]), dtype=output_detail["dtype"])
    for index in range(len(images)):
        interpreter.set_tensor(input_detail["index"], inputs[index:index + 1])
        interpreter.invoke()
        outputs[index] = interpreter.get_tensor(output_detail["index"])[0]
    return dequantize(outputs, output_detail)


def evaluate_tflite(path: str | os.PathLike, images, labels, num_threads: int = 1) -> dict:
    """Accuracy of a `.tflite` file in the LiteRT interpreter over a whole split.

    `images`: raw pixels `[n, 28, 28, 1]` in 0..255; `labels`: int `[n]`.
    Returns `{"examples": n, "errors": misclassified, "accuracy": fraction correct}`.
    """
    labels = np.asarray(labels)
    predictions = np.argmax(tflite_predict(path, images, num_threads), axis=-1)
    errors = int(np.sum(predictions != labels))
    return {"examples": len(labels), "errors": errors, "accuracy": 1.0 - errors / max(1, len(labels))}


def mnist_calibration_images(count: int = CALIBRATION_SIZE, data_dir: str | None = None) -> np.ndarray:
    """The first `count` MNIST training images, uint8 `[count, 28, 28, 1]`: int8 calibration data."""
    from tfkd.data import load_mnist  # imported here: only the MNIST commands need the data set

    return load_mnist(data_dir).train.images[:count]


def export_student_files(run_dir: str | os.PathLike, quantizations: Iterable[str],
                         representative_data=None) -> list[str]:
    """Writes `student_<quantization>.tflite` beside `run_dir/student.keras` for each quantization.

    Files newer than `student.keras` are kept, so a rerun only writes what is missing. int8 without
    `representative_data` calibrates on `mnist_calibration_images()`. Returns the paths of all the files.
    """
    run_dir = Path(run_dir)
    source = run_dir / "student.keras"
    if not source.exists():
        raise ValueError(f"run_dir must hold a student.keras, got {str(run_dir)!r}, which does not")
    student, paths = None, []
    for quantization in map(check_quantization, quantizations):
        path = run_dir / f"student_{quantization}.tflite"
        paths.append(str(path))
        if path.exists() and path.stat().st_mtime >= source.stat().st_mtime:
            continue
        if student is None:
            student = load_for_export(source)
        if quantization == "int8" and representative_data is None:
            representative_data = mnist_calibration_images()
        export_tflite(student, path, quantization,
                      representative_data=representative_data if quantization == "int8" else None)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfkd.export",
        description="Convert a saved .keras model (a student, or a Distiller: its student) to a phone-ready "
                    ".tflite file taking raw 0..255 pixels [1, 28, 28, 1] and returning logits [1, 10].")
    parser.add_argument("model", help="a saved .keras file")
    parser.add_argument("--quantization", default="none",
                        help=f"one of {', '.join(QUANTIZATIONS)} (default: none, i.e. float32)")
    parser.add_argument("--out", default=None, help="the .tflite to write (default: <model>_<quantization>.tflite "
                                                    "beside the model)")
    parser.add_argument("--calibration_size", type=int, default=CALIBRATION_SIZE,
                        help="int8 only: how many MNIST training images calibrate the quantization")
    args = parser.parse_args(argv)
    from tfkd.data import DataUnavailableError

    try:
        check_quantization(args.quantization)
        if args.calibration_size <= 0:
            raise ValueError(f"--calibration_size must be a positive integer, got {args.calibration_size}")
        out = args.out or str(Path(args.model).with_name(f"{Path(args.model).stem}_{args.quantization}.tflite"))
        model = load_for_export(args.model)
        data = mnist_calibration_images(args.calibration_size) if args.quantization == "int8" else None
        export_tflite(model, out, args.quantization, representative_data=data)
    except (ValueError, DataUnavailableError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    info = describe_tflite(out)
    print(f"{out}: {info['bytes']:,} bytes, {model.name} ({model.count_params():,} parameters), quantization "
          f"{args.quantization}; input {info['input']['shape']} {info['input']['dtype']}, output "
          f"{info['output']['shape']} {info['output']['dtype']}")
    if args.quantization == "int8":
        source, target = info["input"], info["output"]
        print(f"int8 input: q = round(pixel / {source['scale']:g}) + ({source['zero_point']}); "
              f"logits = (q_out - ({target['zero_point']})) * {target['scale']:g}")
    return 0


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    sys.exit(main())
