import numpy as np

from tfkd import models


def test_lenet_teacher_parameters_and_shape():
    teacher = models.lenet_teacher()
    assert teacher.count_params() == 431_080
    assert teacher(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)
    # Dropout has no parameters: the article's architecture is unchanged.
    assert models.lenet_teacher(dropout=0.5).count_params() == 431_080


def test_mlp_student_parameters_and_shape():
    student = models.mlp_student()
    assert student.count_params() == 1_276_810
    assert student(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
    assert models.mlp_student(hidden_units=(32,)).count_params() == 784 * 32 + 32 + 32 * 10 + 10


def test_architecture_layers():
    teacher = models.lenet_teacher()
    kinds = [layer.__class__.__name__ for layer in teacher.layers]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert teacher.get_layer("conv1").kernel_size == (5, 5) and teacher.get_layer("conv1").filters == 20
    assert teacher.get_layer("conv2").filters == 50 and teacher.get_layer("fc500").units == 500
