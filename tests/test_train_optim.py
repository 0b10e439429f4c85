"""Optimisers: hand-computed updates, convergence, state round trips."""
import numpy as np
import pytest

from nnspec.runtime.kernelcache import numba_available
from nnspec.train.optim import OPTIMIZERS, SGD, Adam, AdamW, Momentum, make_optimizer


def test_sgd_one_step():
    p = {"W": np.array([1.0, 2.0])}
    SGD(lr=0.1).step(p, {"W": np.array([0.5, -1.0])})
    np.testing.assert_allclose(p["W"], [0.95, 2.1])


def test_momentum_two_steps():
    # v1 = g = 1, p1 = -0.1;  v2 = 0.9 * 1 + 1 = 1.9, p2 = -0.1 - 0.19 = -0.29
    p = {"w": np.zeros(1)}
    opt = Momentum(lr=0.1, momentum=0.9)
    opt.step(p, {"w": np.ones(1)})
    np.testing.assert_allclose(p["w"], [-0.1])
    opt.step(p, {"w": np.ones(1)})
    np.testing.assert_allclose(p["w"], [-0.29])


def test_nesterov_two_steps():
    # step 1: v = 1, p -= 0.1 * (1 + 0.9) -> -0.19
    # step 2: v = 1.9, p -= 0.1 * (1 + 0.9 * 1.9) = 0.271 -> -0.461
    p = {"w": np.zeros(1)}
    opt = Momentum(lr=0.1, momentum=0.9, nesterov=True)
    opt.step(p, {"w": np.ones(1)})
    np.testing.assert_allclose(p["w"], [-0.19])
    opt.step(p, {"w": np.ones(1)})
    np.testing.assert_allclose(p["w"], [-0.461])


def test_adam_first_step_is_lr_times_sign():
    # After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
    g = np.array([3.0, -0.5, 1e-3, 0.0])
    p = {"w": np.zeros(4)}
    Adam(lr=0.01).step(p, {"w": g})
    np.testing.assert_allclose(p["w"], -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(p["w"][:3], -0.01 * np.sign(g[:3]), rtol=1e-4)
    # a large eps makes the eps term visible
    p = {"w": np.zeros(4)}
    Adam(lr=0.01, eps=0.5).step(p, {"w": g})
    np.testing.assert_allclose(p["w"], -0.01 * g / (np.abs(g) + 0.5), rtol=1e-12)


def test_adam_second_step_matches_formula():
    b1, b2, lr, eps = 0.9, 0.999, 0.01, 1e-8
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 4.0])
    p = {"w": np.zeros(2)}
    opt = Adam(lr=lr)
    opt.step(p, {"w": g1})
    opt.step(p, {"w": g2})
    expected = -lr * g1 / (np.abs(g1) + eps)
    m = (1 - b1) * (b1 * g1 + g2)
    v = (1 - b2) * (b2 * g1**2 + g2**2)
    expected -= lr * (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
    np.testing.assert_allclose(p["w"], expected, rtol=1e-12)


def test_adam_converges_on_quadratic():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 5.0, size=10)
    c = rng.normal(size=10)
    p = {"x": np.zeros(10)}
    opt = Adam(lr=0.05)
    for _ in range(2000):
        opt.step(p, {"x": a * (p["x"] - c)})  # grad of 0.5 * sum(a (x - c)^2)
    np.testing.assert_allclose(p["x"], c, atol=1e-3)


def test_weight_decay_variants():
    p = {"w": np.array([2.0])}
    AdamW(lr=0.1, weight_decay=0.5).step(p, {"w": np.zeros(1)})
    np.testing.assert_allclose(p["w"], [2.0 * (1 - 0.1 * 0.5)])  # zero grad: decay only
    # Adam's weight_decay is L2 folded into the gradient
    pa, pb = {"w": np.array([2.0, -1.0])}, {"w": np.array([2.0, -1.0])}
    g = np.array([0.3, 0.7])
    Adam(lr=0.1, weight_decay=0.5).step(pa, {"w": g})
    Adam(lr=0.1).step(pb, {"w": g + 0.5 * pb["w"]})
    np.testing.assert_array_equal(pa["w"], pb["w"])
    p = {"w": np.array([1.0])}
    SGD(lr=0.1, weight_decay=1.0).step(p, {"w": np.array([1.0])})
    np.testing.assert_allclose(p["w"], [0.8])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_parameters_are_untouched(name):
    p = {"a": np.ones(3), "frozen": np.ones(3)}
    opt = make_optimizer(name, lr=0.1)
    opt.step(p, {"a": np.ones(3)})
    np.testing.assert_array_equal(p["frozen"], np.ones(3))
    assert not (p["a"] == 1).any()
    assert all("frozen" not in k for k in opt.state_dict())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_updates_in_place_and_keep_dtype(name):
    w = np.ones((2, 3), dtype=np.float32)
    p = {"W": w}
    opt = make_optimizer(name, lr=0.1)
    for _ in range(2):
        opt.step(p, {"W": np.full((2, 3), 0.5, dtype=np.float32)})
    assert p["W"] is w and w.dtype == np.float32 and (w < 1).all()


def _grad_stream(seed, n):
    rng = np.random.default_rng(seed)
    return [{"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for _ in range(n)]


@pytest.mark.parametrize("kwargs", [
    {"name": "sgd", "lr": 0.1},
    {"name": "momentum", "lr": 0.1, "nesterov": True},
    {"name": "adam", "lr": 0.01, "weight_decay": 0.1},
    {"name": "adamw", "lr": 0.01},
])
def test_state_dict_round_trip_continues_identically(kwargs):
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    grads = _grad_stream(1, 6)
    p = {"W": np.ones((3, 2)), "b": np.zeros(2)}
    a = make_optimizer(name, **kwargs)
    for g in grads[:3]:
        a.step(p, g)
    saved = a.state_dict()
    p2 = {k: v.copy() for k, v in p.items()}
    for g in grads[3:]:
        a.step(p, g)
    b = make_optimizer(name, lr=123.0)  # hyperparameters come back from the state
    b.load_state_dict(saved)
    for g in grads[3:]:
        b.step(p2, g)
    for k in p:
        np.testing.assert_array_equal(p[k], p2[k])
    # the snapshot was a copy: continuing did not change it
    if name in ("adam", "adamw"):
        assert saved["t/W"] == 3
        assert not np.array_equal(saved["m/W"], a.state["m"]["W"])


def test_load_state_dict_of_other_kind_fails():
    with pytest.raises(ValueError, match="adam"):
        SGD(0.1).load_state_dict(Adam().state_dict())


def test_make_optimizer_errors_list_choices():
    with pytest.raises(ValueError) as e:
        make_optimizer("adagrad")
    assert all(n in str(e.value) for n in ("sgd", "momentum", "adam", "adamw"))
    with pytest.raises(ValueError) as e:
        make_optimizer("adam", betas=(0.9, 0.99))
    assert "betas" in str(e.value) and "beta1" in str(e.value) and "weight_decay" in str(e.value)
    assert isinstance(make_optimizer("ADAM", lr=0.1), Adam)


def test_gradient_errors_are_clear():
    with pytest.raises(KeyError, match="nope"):
        SGD(0.1).step({"W": np.ones(2)}, {"nope": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        SGD(0.1).step({"W": np.ones(2)}, {"W": np.ones(3)})


def test_sgd_updates_only_the_rows_a_row_gradient_names():
    from nnspec.runtime import RowGrad
    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 4)).astype(np.float32)
    dense = np.zeros_like(p)
    rows = np.array([3, 7, 40])
    dense[rows] = rng.normal(size=(3, 4))
    a, b = p.copy(), p.copy()
    make_optimizer("sgd", lr=0.1).step({"t": a}, {"t": RowGrad.of(dense, rows)})
    make_optimizer("sgd", lr=0.1).step({"t": b}, {"t": dense})
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_on_a_large_parameter_takes_one_compiled_pass_with_the_numpy_steps_numbers(name, dtype, monkeypatch):
    """A parameter of 2^16 numbers or more (an embedding table) goes through adamkernel, and so do the
    small ones once it is loaded, bit for bit what the NumPy steps give over several steps (a
    schedule's lr, weight decay, clipping's scale)."""
    from nnspec.train import adamkernel
    if not numba_available():
        pytest.skip("numba (the fast extra) is not installed")
    rng = np.random.default_rng(0)
    shape = (1000, 70)
    assert np.prod(shape) >= adamkernel.MIN_SIZE
    start = {"table": rng.normal(size=shape).astype(dtype), "small": rng.normal(size=(30,)).astype(dtype)}
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in start.items()} for _ in range(4)]
    runs = {}
    for compiled in (True, False):
        calls = []
        real = adamkernel.adam_step
        monkeypatch.setattr(adamkernel, "adam_step", lambda *a, **k: (calls.append(a[0].shape), real(*a, **k)))
        if not compiled:
            monkeypatch.setattr(adamkernel.KERNEL, "fn", False)     # (as where numba is missing)
        params = {k: v.copy() for k, v in start.items()}
        opt = make_optimizer(name, lr=0.01, weight_decay=0.1)
        for i, g in enumerate(grads):
            opt.lr = 0.01 / (i + 1)
            opt.step(params, {k: v.copy() for k, v in g.items()}, scale=0.5 if i == 2 else 1.0)
        runs[compiled] = params, opt.state_dict()
        assert calls == ([shape, (30,)] * len(grads) if compiled else [])
    for k in start:
        np.testing.assert_array_equal(runs[True][0][k], runs[False][0][k])
    for k, v in runs[False][1].items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(runs[True][1][k], v)


@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_sgds_one_loop_update_equals_the_per_parameter_one_bit_for_bit(consume, scale):
    # SGD.step writes the per-parameter update (Optimizer.step -> _update_scaled) out in one loop:
    # the same numbers for every kind of gradient, its own, shared, strided, a table's rows, float64
    from nnspec.runtime.rowgrad import RowGrad
    from nnspec.train.optim import Optimizer

    def make():
        rng = np.random.default_rng(3)
        params = {k: rng.normal(size=s).astype(np.float32) for k, s in
                  [("a", (5, 4)), ("b", (4,)), ("c", (4,)), ("t", (9, 3)), ("big", (300, 70)), ("s", (3, 4))]}
        shared = rng.normal(size=8).astype(np.float32)
        table = np.zeros((9, 3), np.float32)
        table[[1, 4]] = rng.normal(size=(2, 3))
        grads = {"a": rng.normal(size=(5, 4)).astype(np.float32), "b": shared[:4], "c": shared[4:],
                 "t": RowGrad.of(table, np.array([1, 4])), "big": rng.normal(size=(300, 70)),
                 "s": rng.normal(size=(4, 3)).astype(np.float32).T}
        return params, grads

    got_p, got_g = make()
    want_p, want_g = make()
    fast, slow = SGD(lr=0.3), SGD(lr=0.3)
    for _ in range(2):
        fast.step(got_p, got_g, scale=scale, consume=consume)
        Optimizer.step(slow, want_p, want_g, scale=scale, consume=consume)
    for k in want_p:
        assert got_p[k].tobytes() == want_p[k].tobytes(), k
    assert fast.steps == slow.steps == {k: 2 for k in want_p}


@pytest.mark.parametrize("gradient", [np.float32(0.25), np.array(0.25, np.float32), np.array([0.25, -0.5], np.float32)],
                         ids=["a NumPy scalar", "a 0-d array", "a vector"])
def test_adam_with_its_kernel_loaded_takes_a_scalar_parameter_and_its_numpy_scalar_gradient(gradient, monkeypatch):
    # once a large parameter has loaded the compiled step it takes small ones too; a scalar
    # parameter's gradient may come as a NumPy scalar (found by the text fuzzer: numba's typing
    # error reached the user), which stays with NumPy's steps, to the same numbers
    from nnspec.train import adamkernel
    if not numba_available():
        pytest.skip("numba (the fast extra) is not installed")
    start = np.full(np.shape(gradient), 0.5, np.float32)
    runs = []
    for loaded in (True, False):
        if loaded:
            adamkernel.KERNEL.get()
        else:
            monkeypatch.setattr(adamkernel.KERNEL, "fn", False)
        params, opt = {"a": start.copy()}, make_optimizer("adam", lr=0.01)
        for _ in range(3):
            opt.step(params, {"a": gradient.copy()})
        runs.append(params["a"])
    np.testing.assert_array_equal(runs[0], runs[1])
