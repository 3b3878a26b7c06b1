import numpy as np
import pytest

import tfkd


def test_golden_value_by_hand():
    teacher = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], np.float32)
    student = np.array([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    # Row 1: (0 + 4 + 0) = 4; row 2: (1 + 4 + 9) = 14; total 18; T = 2 -> 18 / (2 * 2) = 4.5
    assert float(tfkd.logit_regression_loss(teacher, student)) == pytest.approx(4.5)


def test_argument_order_and_symmetry_and_zero():
    z = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    assert float(tfkd.logit_regression_loss(z, z)) == 0.0
    g = z + 1.0
    # Every element differs by 1: sum = 80, T = 8 -> 80 / 16 = 5.
    assert float(tfkd.logit_regression_loss(z, g)) == pytest.approx(5.0)


def test_global_batch_size_divides_instead_of_rows():
    z = np.zeros((4, 2), np.float32)
    g = np.ones((4, 2), np.float32)
    assert float(tfkd.logit_regression_loss(z, g)) == pytest.approx(1.0)
    assert float(tfkd.logit_regression_loss(z, g, batch_size=8)) == pytest.approx(0.5)
