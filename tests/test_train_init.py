"""Initialisers: shapes, dtypes, statistics, determinism, default policy."""
import math

import numpy as np
import pytest

from nnspec.initializers import INITIALIZERS, default_initializer, fans, initialize

RANDOM = sorted(n for n in INITIALIZERS if n not in ("zeros", "ones"))


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_and_dtype(name, dtype):
    w = INITIALIZERS[name]((64, 32), np.random.default_rng(0), dtype)
    assert w.shape == (64, 32) and w.dtype == dtype and np.isfinite(w).all()


@pytest.mark.parametrize("name", RANDOM)
def test_deterministic_by_seed(name):
    a = INITIALIZERS[name]((16, 8), np.random.default_rng(7), np.float64)
    b = INITIALIZERS[name]((16, 8), np.random.default_rng(7), np.float64)
    c = INITIALIZERS[name]((16, 8), np.random.default_rng(8), np.float64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_constant_initialisers():
    rng = np.random.default_rng(0)
    assert (INITIALIZERS["zeros"]((3, 4), rng, np.float32) == 0).all()
    assert (INITIALIZERS["ones"]((5,), rng, np.float32) == 1).all()


def test_fans():
    assert fans((10, 20)) == (20, 10)  # (m, n): fan_out = m, fan_in = n
    assert fans((7,)) == (7, 7)
    assert fans((8, 3, 5, 5)) == (75, 200)


def test_xavier_bound_and_variance():
    rng = np.random.default_rng(0)
    w = INITIALIZERS["xavier"]((300, 200), rng, np.float64)
    bound = math.sqrt(6 / (200 + 300))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert INITIALIZERS["glorot"] is INITIALIZERS["xavier"]
    v = INITIALIZERS["xavier"]((50,), rng, np.float64)  # vector: fan_in = fan_out = n
    assert np.abs(v).max() <= math.sqrt(6 / 100)


def test_xavier_normal_he_and_he_uniform_statistics():
    rng = np.random.default_rng(1)
    w = INITIALIZERS["xavier_normal"]((300, 200), rng, np.float64)
    assert w.std() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    w = INITIALIZERS["he"]((300, 200), rng, np.float64)
    assert w.std() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    assert abs(w.mean()) < 0.01
    w = INITIALIZERS["he_uniform"]((300, 200), rng, np.float64)
    assert np.abs(w).max() <= math.sqrt(6 / 200)
    assert w.std() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    assert INITIALIZERS["kaiming"] is INITIALIZERS["he"]


def test_uniform_and_normal_attrs():
    rng = np.random.default_rng(2)
    w = INITIALIZERS["uniform"]((1000,), rng, np.float64)
    assert np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.09
    w = initialize("uniform", (1000,), rng, scale=0.5)
    assert np.abs(w).max() <= 0.5 and np.abs(w).max() > 0.45
    w = INITIALIZERS["normal"]((100, 100), rng, np.float64)
    assert w.std() == pytest.approx(0.01, rel=0.05)
    w = initialize("normal", (100, 100), rng, std=2.0)
    assert w.std() == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (16, 16), (8, 2, 3)])
def test_orthogonal(shape):
    w = INITIALIZERS["orthogonal"](shape, np.random.default_rng(3), np.float64)
    assert w.shape == shape
    m = w.reshape(shape[0], -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-10)
    with pytest.raises(ValueError, match="matrix"):
        INITIALIZERS["orthogonal"]((5,), np.random.default_rng(0), np.float64)


def test_initialize_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="xavier"):
        initialize("lecun", (2, 2), rng)
    with pytest.raises(ValueError, match="accepted: gain"):
        initialize("xavier", (2, 2), rng, std=1.0)


def test_default_policy():
    assert default_initializer((10, 20)) == ("xavier", {})
    assert default_initializer((20,)) == ("zeros", {})
    assert default_initializer((20,), "bias") == ("zeros", {})
    assert default_initializer((20,), "gain") == ("ones", {})
    assert default_initializer((16, 16), "recurrent") == ("orthogonal", {})
    name, attrs = default_initializer((1000, 64), "embedding")
    assert name == "normal" and attrs["std"] == pytest.approx(1 / 8)
    table = initialize(name, (1000, 64), np.random.default_rng(0), **attrs)
    assert np.linalg.norm(table, axis=1).mean() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="role"):
        default_initializer((3,), "mystery")


def test_a_models_parameters_are_drawn_on_one_blas_thread(monkeypatch):
    # as every pass runs: an orthogonal matrix's QR on the threads of a busy machine took 0.2 s
    # where one thread takes 1 ms, and one thread gives the same numbers
    from nnspec import compile_text
    from nnspec.model import init_params
    from nnspec.runtime import _blas_libs
    libs = _blas_libs()
    if not libs:
        pytest.skip("threadpoolctl sees no BLAS library")
    threads, qr = [], np.linalg.qr
    monkeypatch.setattr(np.linalg, "qr", lambda a, *args, **kw: (threads.append(
        [lib.get_num_threads() for lib in libs]), qr(a, *args, **kw))[1])
    plan = compile_text("input x[8]\noutput y[8]\ny = U @ x\nparam U init orthogonal\n").plan
    before = [lib.get_num_threads() for lib in libs]
    try:
        for lib in libs:
            lib.set_num_threads(2)      # (a machine's several threads, even where it has one core)
        params = init_params(plan, seed=3)
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)
    assert threads == [[1] * len(libs)]
    monkeypatch.setattr(np.linalg, "qr", qr)
    np.testing.assert_array_equal(params["U"], INITIALIZERS["orthogonal"](
        (8, 8), np.random.default_rng([3, *b"U"]), np.float32))
