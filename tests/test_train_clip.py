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


def test_the_global_norm_reads_an_embedding_tables_touched_rows_only_and_is_the_dense_norm():
    from nnspec.runtime.rowgrad import RowGrad
    rng = np.random.default_rng(0)
    dense = np.zeros((5000, 40), np.float32)
    rows = np.array([3, 17, 400, 4999])
    dense[rows] = rng.normal(size=(4, 40))
    big = rng.normal(size=(300, 500)).astype(np.float32)     # more numbers than one chunk
    want = math.sqrt(float(np.sum(dense.astype(np.float64) ** 2)) + float(np.sum(big.astype(np.float64) ** 2)))
    table = RowGrad.of(dense, rows)
    assert global_norm({"table": table, "W": big}) == pytest.approx(want, rel=1e-12)
    dense[0, 0] = np.inf          # outside the rows it promises: not read
    assert math.isfinite(global_norm({"table": table}))
    assert math.isinf(global_norm({"table": dense}))          # a plain array: every number read
