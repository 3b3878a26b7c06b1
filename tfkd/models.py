"""The article's two networks. Both take 28x28x1 images scaled to [0, 1] and return logits (no softmax)."""

from __future__ import annotations

import keras

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def lenet_teacher(dropout: float = 0.0, name: str = "lenet_teacher") -> keras.Model:
    """`[C5(S1P0)@20-MP2(S2)]-[C5(S1P0)@50-MP2(S2)]-FC500-FC10`, ReLU: 431,080 parameters.

    Input `[n, 28, 28, 1]`, output logits `[n, 10]`. `dropout` (before each dense layer) has no parameters.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, 2, name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, 2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Dense(500, activation="relu", name="fc500")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout2")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def mlp_student(hidden_units: tuple[int, ...] = (800, 800), name: str = "mlp_student") -> keras.Model:
    """`FC800-FC800-FC10`, ReLU: 1,276,810 parameters with the default `hidden_units`.

    Input `[n, 28, 28, 1]` (flattened inside), output logits `[n, 10]`.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for index, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"fc{index + 1}")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name=name)
