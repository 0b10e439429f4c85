"""Compiled float32 kernels for plain steps outside loops (runtime/plainkernels.py): an activation
in a prepared pass (``ExecOptions.plain_kernels``) computes NumPy's values and VJPs (relu's bit for
bit), the softmax cross-entropy of logits (``ExecOptions.fast_loss``) NumPy's loss and gradient to
float32 rounding, what the kernels do not take goes to the op's NumPy maths, non-finite logits still
give a non-finite loss, and a network trained with them agrees with the NumPy path. Skipped without
numba (the ``fast`` extra)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.model import Model
from nnspec.ops import REGISTRY
from nnspec.ops.registry import Ctx
from nnspec.runtime import ExecOptions, Executor, plainkernels
from nnspec.runtime.kernelcache import numba_available
from nnspec.train.optim import make_optimizer

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba (the fast extra) is not installed")


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """These tests' small arrays take the kernels too (a real step needs plainkernels.MIN_SIZE numbers)."""
    monkeypatch.setattr(plainkernels, "MIN_SIZE", 0)

RELU, XENT = REGISTRY["relu"], REGISTRY["cross_entropy_logits"]
SPECIAL = [np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0]
MLP = """input x[6]
target y : class[5]
h1[16] = relu(W0 @ x + b0)
h2[16] = sigmoid(W1 @ h1 + b1)
h3[16] = tanh(W2 @ h2 + b2)
p = softmax(W3 @ h3 + b3)
loss cross_entropy(p, y)
"""
SEQ = """input w : seq of token
target y : seq of class
e = embed(w, 4)
h = lstm(e, H = 6)
loss cross_entropy(softmax(Wo @ h + bo), y)
"""


def bits(a):
    return np.ascontiguousarray(a).view(np.int32)


def special(shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    x.reshape(-1)[:len(SPECIAL)] = SPECIAL
    return x


# ---- the kernels against the ops' NumPy maths --------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_kernel_is_np_maximum_bit_for_bit(inplace):
    kernel = plainkernels.elementwise_kernel(RELU, {}, 24, np.float32)
    x = special((5, 24))
    want = np.maximum(x, 0)
    if inplace:                 # (a spending pass: the output over the input)
        out = x.copy()
        kernel.forward_into([out], out, {})
    else:
        out = np.full_like(x, 7)
        kernel.forward_into([x], out, {})
    np.testing.assert_array_equal(bits(out), bits(want))   # NaN stays NaN (its sign too), -0.0 gives 0.0


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_vjp_kernel_is_numpys_bit_for_bit(accumulate, inplace):
    kernel = plainkernels.elementwise_kernel(RELU, {}, 24, np.float32)
    x = special((5, 24))
    out = np.maximum(x, 0)
    g = special((5, 24), seed=1)[::-1].copy()     # (its specials where out is something else)
    start = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    with np.errstate(invalid="ignore"):
        want = start.copy() if accumulate else np.empty_like(x)
        RELU.vjp_into(0, g, [x], out, {}, want, accumulate)
        if inplace:    # the input's gradient over the output's (prepared: ``d *= h > 0``)
            got = (start if accumulate else g).copy()
            kernel.vjp_into(0, got, [x], out, {}, got, accumulate)
            if accumulate:    # (dest += dest * f': not a case the runtime makes; NumPy's then)
                want = start.copy()
                RELU.vjp_into(0, start.copy(), [x], out, {}, want, True)
        else:
            got = start.copy() if accumulate else np.full_like(x, 7)
            kernel.vjp_into(0, g, [x], out, {}, got, accumulate)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "exp", "neg"])
def test_other_one_input_elementwise_ops_within_float32_rounding(name):
    op = REGISTRY[name]
    kernel = plainkernels.elementwise_kernel(op, {}, 40, np.float32)
    x = (4 * np.random.default_rng(3).normal(size=(6, 40))).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    g = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
    want, got, dg = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    with np.errstate(over="ignore", invalid="ignore"):
        op.forward_into([x], want, {})
        dw = op.vjp(g, [x], want, {}, Ctx())[0]
    kernel.forward_into([x], got, {})
    kernel.vjp_into(0, g, [x], want, {}, dg, False)
    for a, b in [(got, want), (dg, dw)]:
        assert np.array_equal(np.isfinite(a), np.isfinite(b))     # non-finite where NumPy's is
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=3e-7, atol=1e-7)


def test_arrays_a_kernel_cannot_take_go_to_numpy():
    kernel = plainkernels.elementwise_kernel(RELU, {}, 12, np.float32)
    x = special((6, 24))[:, ::2]          # elements apart
    out = np.empty(x.shape, np.float32)
    kernel.forward_into([x], out, {})
    np.testing.assert_array_equal(bits(out), bits(np.maximum(x, 0)))
    assert plainkernels.elementwise_kernel(RELU, {}, 12, np.float64) is None
    assert plainkernels.elementwise_kernel(REGISTRY["add"], {}, 12, np.float32) is None   # (two inputs)
    assert plainkernels.elementwise_kernel(REGISTRY["gelu"], {}, 12, np.float32) is None  # (its VJP reads x)


def xent_both(z, y, mask=None, spend=False):
    """(loss, gradient) by the op's NumPy maths and by the kernels, each on its own copy of z."""
    kernels = plainkernels.softmax_xent(XENT, np.float32)
    out = []
    for f in (XENT, kernels):
        zc = z.copy()
        ctx = Ctx(mask=mask, spend=spend)
        with np.errstate(invalid="ignore", over="ignore"):
            loss = f.forward([zc, y], {}, ctx)
            d = f.vjp(np.float32(2.0), [zc, y], loss, {}, ctx)[0]
        out.append((loss, d.copy()))
    return out


@pytest.mark.parametrize("shape", [(64, 10), (20, 1000), (3, 4, 17), (1, 1)])
@pytest.mark.parametrize("spend", [False, True])
def test_softmax_cross_entropy_kernel_within_float32_rounding(shape, spend):
    rng = np.random.default_rng(5)
    z = (3 * rng.normal(size=shape)).astype(np.float32)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    mask = np.ones(shape[:-1], np.float32) if len(shape) == 3 else None   # a sequence with every step real
    (l_np, d_np), (l_k, d_k) = xent_both(z, y, mask, spend)
    assert l_k.dtype == np.float32 and l_k.shape == ()
    np.testing.assert_allclose(l_k, l_np, rtol=2e-6)
    np.testing.assert_allclose(d_k, d_np, rtol=1e-5, atol=1e-8)


def test_padding_masks_and_other_dtypes_take_the_ops_numpy_maths():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(4, 3, 6)).astype(np.float32)
    y = rng.integers(0, 6, size=(4, 3))
    padded = y.copy()
    padded[3, 1] = -1
    mask = np.ones((4, 3), np.float32)
    mask[2:, 0] = 0
    for yy, m in [(padded, None), (y, mask)]:
        (l_np, d_np), (l_k, d_k) = xent_both(z, yy, m, spend=True)
        assert l_k == l_np                            # the same NumPy calls: the same numbers
        np.testing.assert_array_equal(d_k, d_np)
    assert plainkernels.softmax_xent(XENT, np.float64) is None
    with pytest.raises(ValueError, match="out of range"):
        xent_both(z, np.full((4, 3), 6))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["target", "other"])
def test_non_finite_logits_give_a_non_finite_loss(bad, where):
    z = np.random.default_rng(7).normal(size=(8, 5)).astype(np.float32)
    y = np.arange(8) % 5
    z[3, y[3] if where == "target" else (y[3] + 1) % 5] = bad
    (l_np, _), (l_k, _) = xent_both(z, y)
    assert np.isfinite(l_k) == np.isfinite(l_np)
    if where == "target" or bad != -np.inf:     # (-inf at another class is a 0 probability: finite)
        assert not np.isfinite(l_k)


# ---- in a network -----------------------------------------------------------------------------------
@pytest.fixture
def kernels_used(monkeypatch):
    """Which kernel paths ran, by name."""
    used: dict[str, int] = {}

    def spy(cls, name):
        f = getattr(cls, name)

        def counted(self, *a, **k):
            used[f"{cls.__name__}.{name}"] = used.get(f"{cls.__name__}.{name}", 0) + 1
            return f(self, *a, **k)
        monkeypatch.setattr(cls, name, counted)
    for cls, name in [(plainkernels.Elementwise, "forward_into"), (plainkernels.Elementwise, "vjp_into"),
                      (plainkernels.SoftmaxXent, "forward"), (plainkernels.SoftmaxXent, "vjp")]:
        spy(cls, name)
    return used


def mlp(seed=0, batch=12):
    plan = compile_text(MLP).plan
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.6, size=p.shape).astype(np.float32) for p in plan.params}
    feeds = {"x": rng.normal(size=(batch, 6)).astype(np.float32), "y": rng.integers(0, 5, size=batch)}
    return plan, params, feeds


def single_use_passes(ex, params, feeds, n=3, **kw):
    for _ in range(n):        # the second pass builds the prepared pass, the third reuses it
        tape = ex.forward(params, feeds, single_use=True, **kw)
        loss = float(tape.values[ex.plan.loss])
        grads = ex.backward(tape, wrt=list(params))
        del tape
    return loss, grads


def test_an_mlps_prepared_pass_runs_the_kernels_and_agrees_with_the_reference(kernels_used):
    plan, params, feeds = mlp()
    ex = Executor(plan, np.float32)
    ex.plain_kernels_after = 0
    loss, grads = single_use_passes(ex, params, feeds)
    run = ex._pass_run
    assert run is not None and run.kernels and len(run.vjps) == 3     # relu, sigmoid, tanh
    for k in ["Elementwise.forward_into", "Elementwise.vjp_into", "SoftmaxXent.forward", "SoftmaxXent.vjp"]:
        assert kernels_used.get(k), f"{k} did not run"
    ref_loss, ref = single_use_passes(Executor(plan, np.float32, options=ExecOptions.reference()), params, feeds, n=1)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
    assert set(grads) == set(ref)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-4, atol=2e-6, err_msg=k)


def test_switched_off_the_numbers_are_numpys(kernels_used):
    plan, params, feeds = mlp()
    got = []
    for options in [ExecOptions(plain_kernels=False, fast_loss=False), ExecOptions()]:
        ex = Executor(plan, np.float32, options=options)
        if options.plain_kernels:
            ex.plain_kernels_after = None       # (never made: the NumPy path)
        else:
            assert ex.plain_kernels_after is None
        got.append(single_use_passes(ex, params, feeds))
    assert not kernels_used
    assert got[0][0] == got[1][0]
    for k in got[0][1]:
        np.testing.assert_array_equal(got[0][1][k], got[1][1][k], err_msg=k)


def test_float64_is_untouched(kernels_used):
    plan, params, feeds = mlp()
    params = {k: v.astype(np.float64) for k, v in params.items()}
    ex = Executor(plan, np.float64)
    ex.plain_kernels_after = 0
    single_use_passes(ex, params, feeds)
    assert not kernels_used


def test_nothing_is_compiled_before_the_pass_threshold(monkeypatch):
    def not_yet(*a, **k):
        raise AssertionError("compiled before the threshold")
    monkeypatch.setattr(plainkernels, "elementwise_kernel", not_yet)
    monkeypatch.setattr(plainkernels, "softmax_xent", not_yet)
    plan, params, feeds = mlp()
    ex = Executor(plan, np.float32)
    ex.plain_kernels_after = 4
    single_use_passes(ex, params, feeds, n=4)
    with pytest.raises(AssertionError, match="before the threshold"):
        single_use_passes(ex, params, feeds, n=1)


def test_a_prepared_pass_with_kernels_is_kept():
    plan, params, feeds = mlp()
    ex = Executor(plan, np.float32)
    ex.plain_kernels_after = 0
    runs = []
    for _ in range(4):
        single_use_passes(ex, params, feeds, n=1)
        runs.append(ex._pass_run)
    assert runs[1] is not None and runs[1] is runs[2] is runs[3]


def test_a_sequence_loss_with_every_step_real_takes_the_kernel_and_padding_does_not(kernels_used):
    plan = compile_text(SEQ, bindings={"vocab(w)": 9, "classes(y)": 7}).plan
    rng = np.random.default_rng(8)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(np.float32) for p in plan.params}
    feeds = {"w": rng.integers(0, 9, size=(5, 3)), "y": rng.integers(0, 7, size=(5, 3))}
    for lengths, kernel in [(None, True), (np.array([5, 2, 4]), False)]:
        kernels_used.clear()
        ex = Executor(plan, np.float32)
        ex.plain_kernels_after = 0
        loss, grads = single_use_passes(ex, params, feeds, lengths=lengths)
        assert bool(kernels_used.get("SoftmaxXent.vjp")) == kernel
        ref_loss, ref = single_use_passes(Executor(plan, np.float32, options=ExecOptions.reference()), params,
                                          feeds, n=1, lengths=lengths)
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
        for k in grads:
            np.testing.assert_allclose(grads[k], ref[k], rtol=1e-4, atol=2e-6, err_msg=k)


def test_sgd_training_agrees_with_the_numpy_path(kernels_used):
    plan, params, feeds = mlp(seed=1, batch=32)
    compiled = compile_text(MLP)
    models = [Model(compiled, {k: v.copy() for k, v in params.items()}) for _ in range(2)]
    models[0].executor.plain_kernels_after = 0
    models[1].executor.plain_kernels_after = None       # NumPy's maths
    opts = [make_optimizer("sgd", lr=0.5) for _ in models]
    losses = [[], []]
    for _ in range(8):
        for m, opt, ls in zip(models, opts, losses):
            loss, grads, _ = m.loss_and_grads(feeds, single_use=True)
            ls.append(float(loss))
            opt.step(m.params, grads, consume=True)
    assert kernels_used.get("SoftmaxXent.vjp") and kernels_used.get("Elementwise.vjp_into")
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_a_nan_in_training_still_stops_it():
    plan, params, feeds = mlp()
    params["W3"][0, 0] = np.nan
    ex = Executor(plan, np.float32)
    ex.plain_kernels_after = 0
    loss, _ = single_use_passes(ex, params, feeds)
    assert np.isnan(loss)


def test_a_training_run_with_the_kernels_stops_where_it_goes_non_finite(tmp_path, kernels_used):
    from nnspec import open_session
    from nnspec.train.loop import Trainer, TrainingError
    from nnspec.train.rundir import RunDir

    spec = tmp_path / "diverge.nn"
    spec.write_text("""
input x[2]
target y : class[3]
h[4] = relu(W @ x + b)
loss cross_entropy(softmax(V @ h + c), y)
train { optimizer sgd(lr = 0.1); schedule step(every = 3, gamma = 1e30); batch 2; epochs 60 }
data inline { x = [[1, 0], [0, 1], [1, 1], [0, 0]]; y = [0, 1, 2, 0] }
""")
    s = open_session(spec)
    trainer = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=RunDir("d", root=tmp_path / "runs"),
                      spec_hash=s.spec_hash, checkpoint_seconds=0)
    with pytest.raises(TrainingError, match=r"stopped at step \d+ \(epoch \d+\): .*'W' .*(infinite|NaN)"):
        trainer.fit()   # 120 planned steps: the kernels from the first (Executor.settle_kernels)
    assert kernels_used.get("SoftmaxXent.forward") and kernels_used.get("Elementwise.forward_into")


def test_a_step_of_fewer_numbers_than_the_minimum_stays_numpys(monkeypatch, kernels_used):
    # a small net (specs/xor_train.nn: arrays of 8 numbers) never waits for numba: its steps keep
    # NumPy's calls, which cost about what a kernel's would; the loss's logits (12 x 5) likewise
    monkeypatch.setattr(plainkernels, "MIN_SIZE", 12 * 16 + 1)     # (the MLP's hidden arrays: 12 x 16)
    plan, params, feeds = mlp()
    ex = Executor(plan, np.float32)
    ex.plain_kernels_after = 0
    single_use_passes(ex, params, feeds)
    assert ex._pass_run.kernels and not ex._pass_run.vjps
    assert not any(kernels_used.values())
