"""Gradient clipping."""
import math

import numpy as np
import pytest

from nnspec.train.clip import clip_global_norm, clip_value, global_norm


def test_clip_global_norm_scales_in_place():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]], dtype=np.float32)}
    a = g["a"]
    norm = clip_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert g["a"] is a
    np.testing.assert_allclose(g["a"], [0.6, 0.0])
    np.testing.assert_allclose(g["b"], [[0.8]], rtol=1e-6)
    assert g["b"].dtype == np.float32
    assert global_norm(g) == pytest.approx(1.0, rel=1e-6)


def test_clip_global_norm_leaves_small_and_non_finite_alone():
    g = {"a": np.array([0.3, 0.4])}
    assert clip_global_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g["a"], [0.3, 0.4])
    g = {"a": np.array([np.inf, 1.0])}
    assert math.isinf(clip_global_norm(g, 1.0))
    np.testing.assert_array_equal(g["a"], [np.inf, 1.0])
    with pytest.raises(ValueError):
        clip_global_norm(g, 0.0)


def test_clip_value():
    g = {"a": np.array([-3.0, 0.5, 2.0])}
    a = g["a"]
    clip_value(g, 1.0)
    assert g["a"] is a
    np.testing.assert_array_equal(a, [-1.0, 0.5, 1.0])
