"""Every op's VJP agrees with central differences of its forward.

Each case is (op, inputs, attrs, ctx). The checker draws a random cotangent G
for the output and compares vjp(G) with d sum(forward * G) / d input, for every
float input, in float64. Inputs are drawn away from kinks (relu, abs, max...).
A new op without a case here fails ``test_every_op_has_a_gradcheck_case``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from nnspec.ops import REGISTRY, Ctx, get

rng = np.random.default_rng(0)
B, T, N, K = 3, 4, 2, 3
LENGTHS = np.array([4, 2, 3])                      # sequence 1 and 2 are padded
MASK = (np.arange(T)[:, None] < LENGTHS).astype(float)  # (T, B)
SEQ = {"mask": MASK, "lengths": LENGTHS}


# ---- input makers ----------------------------------------------------------
def normal(*shape):
    return rng.standard_normal(shape)


def away(*shape, kinks=(0.0,), gap=0.15):
    """Normal values at least ``gap`` away from every kink."""
    x = rng.standard_normal(shape) * 1.5
    while (bad := np.min([np.abs(x - k) for k in kinks], axis=0) < gap).any():
        x[bad] = rng.standard_normal(np.count_nonzero(bad)) * 1.5
    return x


def positive(*shape):
    return rng.uniform(0.5, 2.0, shape)


def probs(*shape):
    return rng.uniform(0.05, 0.95, shape)


def spread(*shape):
    """Distinct values 0.3 apart: a tiny perturbation cannot change a max."""
    return (rng.permutation(int(np.prod(shape))) * 0.3 - 1.0).reshape(shape)


def classes(*shape, ignore=1):
    """Int classes in [0, K) with ``ignore`` positions set to -1."""
    y = rng.integers(0, K, shape)
    y.flat[rng.choice(y.size, ignore, replace=False)] = -1
    return y


# ---- cases -----------------------------------------------------------------
@dataclass
class Case:
    op: str
    xs: list
    attrs: dict = field(default_factory=dict)
    ctx: dict = field(default_factory=dict)
    tag: str = ""

    def make_ctx(self):
        """A fresh Ctx per call, with a fixed seed so dropout masks repeat."""
        return Ctx(rng=np.random.default_rng(7), **self.ctx)


def C(op, *xs, tag="", attrs=None, ctx=None):
    return Case(op, list(xs), attrs or {}, ctx or {}, tag)


CASES = [
    # elementwise, with broadcasting of parameters against batch / sequence axes
    *[C(op, normal(B, N), normal(B, N), tag="same") for op in ("add", "sub", "mul")],
    *[C(op, normal(B, N), normal(N), tag="bias") for op in ("add", "sub", "mul")],
    *[C(op, normal(T, B, N), normal(N), tag="seq-bias") for op in ("add", "mul")],
    C("add", normal(T, B, N), normal(B, N), tag="seq+batch"),
    C("mul", normal(B, N), normal(), tag="scalar-param"),
    C("div", normal(B, N), away(B, N, gap=0.5), tag="same"),
    C("div", normal(T, B, N), positive(N), tag="seq-bias"),
    C("neg", normal(B, N)),
    C("pow", positive(B, N), attrs={"p": 3.0}, tag="cube"),
    C("pow", positive(B, N), attrs={"p": -0.5}, tag="rsqrt"),
    C("exp", normal(B, N)),
    C("log", positive(B, N)),
    C("sqrt", positive(B, N)),
    C("square", normal(T, B, N)),
    C("abs", away(B, N)),
    # activations
    C("sigmoid", normal(B, N) * 3),
    C("tanh", normal(T, B, N)),
    C("relu", away(B, N)),
    C("step", away(B, N)),
    C("identity", normal(B, N)),
    C("leaky_relu", away(B, N), attrs={"alpha": 0.1}),
    C("elu", away(B, N)),
    C("softplus", normal(B, N) * 3),
    C("gelu", normal(B, N) * 2),
    C("mish", normal(T, B, N) * 3),
    C("hard_tanh", away(B, N, kinks=(-1.0, 1.0))),
    C("softmax", normal(B, K)),
    C("softmax", normal(T, B, K), tag="seq"),
    C("log_softmax", normal(B, K)),
    C("log_softmax", normal(T, B, K), tag="seq"),
    # linear algebra
    C("matmul", normal(K, N), normal(B, N), tag="batch"),
    C("matmul", normal(K, N), normal(T, B, N), tag="seq"),
    C("linear", normal(K, N), normal(B, N), normal(K), tag="batch"),
    C("linear", normal(K, N), normal(T, B, N), normal(K), tag="seq"),
    C("concat", normal(B, N), normal(B, K), tag="two"),
    C("concat", normal(T, B, N), normal(B, K), normal(1), tag="seq-batch-param"),
    C("slice", normal(B, 5), attrs={"start": 1, "stop": 4}, tag="batch"),
    C("slice", normal(T, B, 5), attrs={"start": 2}, tag="seq-to-end"),
    C("concat_rows", normal(2, N), normal(3, N), tag="matrices"),
    C("concat_rows", normal(2), normal(K), normal(1), tag="vectors"),
    C("embed", np.array([0, 2, 2, -1]), normal(4, N), tag="repeats-and-padding"),
    C("embed", np.array([[1, 3, 0], [3, -1, -1]]), normal(4, N), tag="seq"),
    # regularisation
    C("dropout", normal(B, 4), attrs={"p": 0.5}, ctx={"train": True}, tag="train"),
    C("dropout", normal(B, 4), attrs={"p": 0.5}, tag="eval"),
    # float losses
    C("mse", normal(B, N), normal(B, N)),
    C("perceptron", normal(B, 1), (normal(B, 1) > 0).astype(float)),
    C("hinge", away(B, N, kinks=(-1.0, 1.0)), (normal(B, N) > 0).astype(float)),   # margin 1 is the kink
    C("mse", normal(T, B, N), normal(T, B, N), ctx=SEQ, tag="masked"),
    C("bce", probs(B, N), probs(B, N)),
    C("bce", probs(T, B, 1), rng.integers(0, 2, (T, B, 1)) * 1.0, ctx=SEQ, tag="masked"),
    C("bce_logits", normal(B, N) * 3, probs(B, N)),
    C("bce_logits", normal(T, B, 1), probs(T, B, 1), ctx=SEQ, tag="masked"),
    # class losses: -1 targets and padded steps are ignored
    C("cross_entropy", probs(B + 1, K), classes(B + 1)),
    C("cross_entropy", probs(T, B, K), classes(T, B), ctx=SEQ, tag="masked"),
    C("cross_entropy_logits", normal(B + 1, K), classes(B + 1)),
    C("cross_entropy_logits", normal(T, B, K), classes(T, B), ctx=SEQ, tag="masked"),
    C("nll", -positive(B + 1, K), classes(B + 1)),
    C("nll", -positive(T, B, K), classes(T, B), ctx=SEQ, tag="masked"),
    # over time: padded steps must get no gradient
    C("last", normal(T, B, N), ctx=SEQ),
    C("first", normal(T, B, N), ctx=SEQ),
    C("sum", normal(T, B, N), ctx=SEQ),
    C("mean", normal(T, B, N), ctx=SEQ),
    C("mean", normal(T, B, 2, N), ctx=SEQ, tag="matrix-steps"),
    C("mean", normal(T, B, N), tag="no-mask"),
    C("max", spread(T, B, N), ctx=SEQ),
    C("shift", normal(T, B, N), ctx=SEQ, tag="next"),
    C("shift", normal(T, B, N), attrs={"k": -1}, ctx=SEQ, tag="prev"),
    C("shift", rng.integers(0, 5, (T, B)), ctx=SEQ, tag="ids"),
    C("argmax", spread(B, K)),
    # relating sequence axes (nnspec/ops/axes.py): the parts of attention
    C("along", normal(T, B, N), normal(T + 1, B, K), attrs={"at": 1, "of": 0}, tag="step-along-steps"),
    C("along", normal(B, N), normal(T, B, K), attrs={"at": 0, "of": 0}, tag="example-along-steps"),
    C("dot", normal(T, B, N), normal(T, B, N), tag="same"),
    C("dot", normal(T + 1, T, B, N), normal(N), tag="param"),
    C("dot", normal(T + 1, T, B, N), normal(T, B, N), tag="pairs"),
    C("sum_features", normal(T, B, N)),
    C("softmax_steps", normal(T, B, 1) * 3, ctx=SEQ, tag="masked"),
    C("softmax_steps", normal(T, B, 1), tag="no-mask"),
    C("word_dropout", rng.integers(0, 9, (T, B)), attrs={"p": 0.5}, ctx={"train": True}, tag="train"),
]
PARAMS = [pytest.param(c, id=f"{c.op}-{c.tag}" if c.tag else c.op) for c in CASES]


# ---- the checker -----------------------------------------------------------
def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to x (perturbed in place)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def is_int(x):
    return np.issubdtype(np.asarray(x).dtype, np.integer)


@pytest.mark.parametrize("case", PARAMS)
def test_vjp_matches_central_differences(case):
    op = get(case.op)
    xs = [np.array(x, copy=True) for x in case.xs]
    ctx = case.make_ctx()
    out = op.forward(xs, case.attrs, ctx)
    cot = np.random.default_rng(1).standard_normal(np.shape(out))
    grads = op.vjp(cot, xs, out, case.attrs, ctx)
    assert len(grads) == len(xs)

    def f():
        return float(np.sum(op.forward(xs, case.attrs, case.make_ctx()) * cot))

    for i, (x, g) in enumerate(zip(xs, grads)):
        if is_int(x) or is_int(out):  # ids, classes, argmax: nothing to differentiate
            assert g is None, f"input {i}: expected None for an integer value"
            continue
        assert g.shape == x.shape, f"input {i}: gradient shape {g.shape} != {x.shape}"
        np.testing.assert_allclose(g, numeric_grad(f, x), rtol=1e-6, atol=1e-9,
                                   err_msg=f"{case.op} input {i}")


def test_every_op_has_a_gradcheck_case():
    assert set(REGISTRY) - {c.op for c in CASES} == set()


@pytest.mark.parametrize("case", PARAMS)
def test_float32_in_gives_float32_out(case):
    op = get(case.op)
    xs = [x if is_int(x) else np.asarray(x, dtype=np.float32) for x in case.xs]
    ctx = case.make_ctx()  # the mask stays float64: it must not upcast
    out = op.forward(xs, case.attrs, ctx)
    assert out.dtype == (np.int64 if is_int(out) else np.float32)
    grads = op.vjp(np.ones(np.shape(out), np.float32), xs, out, case.attrs, ctx)
    assert [g.dtype for g in grads if g is not None] == [np.float32] * sum(
        g is not None for g in grads)


# ---- closed-form values ----------------------------------------------------
def no_overflow():
    return np.errstate(over="raise", divide="raise", invalid="raise")  # underflow is fine


def fwd(name, *xs, ctx=None, **attrs):
    return get(name).forward([np.asarray(x) for x in xs], attrs, ctx or Ctx())


def test_softmax_rows_sum_to_one_even_for_huge_logits():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    with no_overflow():
        p = fwd("softmax", z)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    np.testing.assert_allclose(p[1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.exp(fwd("log_softmax", z[:1])), p[:1])


def test_sigmoid_and_softplus_are_stable_at_1000():
    z = np.array([-1000.0, 0.0, 1000.0])
    with no_overflow():
        np.testing.assert_allclose(fwd("sigmoid", z), [0.0, 0.5, 1.0])
        np.testing.assert_allclose(fwd("softplus", z), [0.0, np.log(2.0), 1000.0])


def test_mish_is_x_tanh_softplus_and_stable_at_1000():
    with no_overflow():
        y = fwd("mish", np.array([-1000.0, 0.0, 1.0, 1000.0]))
    np.testing.assert_allclose(y, [0.0, 0.0, np.tanh(np.log1p(np.e)), 1000.0], atol=1e-300)


def test_step_is_heaviside_with_zero_gradient():
    x = np.array([-1.0, 0.0, 2.0])
    assert fwd("step", x).tolist() == [0.0, 0.0, 1.0]
    assert get("step").vjp(np.ones(3), [x], None, {}, Ctx())[0].tolist() == [0.0] * 3


def test_cross_entropy_logits_equals_cross_entropy_of_softmax():
    z, y = normal(5, K), classes(5)
    expected = fwd("cross_entropy", fwd("softmax", z), y)
    np.testing.assert_allclose(fwd("cross_entropy_logits", z, y), expected)
    np.testing.assert_allclose(fwd("nll", fwd("log_softmax", z), y), expected)


@pytest.mark.parametrize("rows, classes_", [(8, 10), (64, 10), (800, 17), (40, 32), (40, 33), (20, 1000)])
def test_cross_entropy_logits_of_few_or_many_classes_is_the_log_softmax_loss_and_its_gradient(rows, classes_):
    """Rows of a few classes take their maxima another way (columns of a transposed copy): the same
    loss and gradient as log_softmax gives, with ignored targets, for short and long rows alike."""
    from nnspec.ops.losses import _row_max
    z = normal(rows, classes_) * 30
    y = rng.integers(-1, classes_, rows)
    np.testing.assert_array_equal(_row_max(z), z.max(axis=1, keepdims=True))
    logp = fwd("log_softmax", z)
    valid = y >= 0
    expected = -logp[np.arange(rows), np.where(valid, y, 0)][valid].mean()
    ctx = Ctx()
    loss = get("cross_entropy_logits").forward([z.copy(), y], {}, ctx)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    d = get("cross_entropy_logits").vjp(np.array(2.0), [z, y], loss, {}, ctx)[0]
    onehot = np.zeros_like(z)
    onehot[np.arange(rows)[valid], y[valid]] = 1
    np.testing.assert_allclose(d, 2.0 * (np.exp(logp) - onehot) * valid[:, None] / valid.sum(), rtol=1e-10, atol=1e-15)


def test_class_losses_average_over_valid_positions_only():
    logp = np.log(np.full((T, B, K), 1.0 / K))
    logp[0, 0, 1] = np.log(0.5)  # the only valid target that differs
    y = np.full((T, B), 2)
    y[0, 0], y[1, 0] = 1, -1
    valid = (MASK > 0) & (y >= 0)
    loss = fwd("nll", logp, y, ctx=Ctx(mask=MASK, lengths=LENGTHS))
    assert loss == pytest.approx((np.log(2) + (valid.sum() - 1) * np.log(K)) / valid.sum())


def test_all_ignored_targets_give_zero_loss_not_nan():
    assert fwd("cross_entropy_logits", normal(2, K), np.array([-1, -1])) == 0.0


def test_bce_logits_equals_bce_of_sigmoid_and_is_stable():
    z, y = normal(6) * 3, probs(6)
    np.testing.assert_allclose(fwd("bce_logits", z, y), fwd("bce", fwd("sigmoid", z), y))
    with no_overflow():
        loss = fwd("bce_logits", np.array([1000.0, -1000.0]), np.array([0.0, 0.0]))
    assert loss == pytest.approx(500.0)  # mean of 1000 and 0


def test_bce_is_finite_at_exact_zero_and_one():
    loss = fwd("bce", np.array([0.0, 1.0], np.float32), np.array([1.0, 0.0], np.float32))
    assert np.isfinite(loss) and loss > 10


def test_mse_averages_over_real_steps():
    pred, target = np.zeros((T, B, 1)), np.ones((T, B, 1))
    pred[~(MASK > 0)] = 100.0  # padding is ignored
    assert fwd("mse", pred, target, ctx=Ctx(mask=MASK)) == pytest.approx(1.0)


def test_sequence_reductions_skip_padding():
    x = np.arange(T * B, dtype=float).reshape(T, B, 1)  # x[t, b] = 3t + b
    ctx = Ctx(mask=MASK, lengths=LENGTHS)
    assert fwd("last", x, ctx=ctx)[:, 0].tolist() == [9.0, 4.0, 8.0]
    assert fwd("max", x, ctx=ctx)[:, 0].tolist() == [9.0, 4.0, 8.0]
    assert fwd("sum", x, ctx=ctx)[:, 0].tolist() == [18.0, 5.0, 15.0]
    assert fwd("mean", x, ctx=ctx)[:, 0].tolist() == [4.5, 2.5, 5.0]
    assert fwd("first", x, ctx=ctx)[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_shift_makes_next_token_targets_padded_with_minus_one():
    ids = np.array([[1, 2], [3, 4], [5, 0]])  # (T=3, B=2); sequence 1 has length 2
    out = fwd("shift", ids, ctx=Ctx(lengths=np.array([3, 2])))
    assert out.dtype == np.int64
    assert out.T.tolist() == [[3, 5, -1], [4, -1, -1]]
    assert get("shift").output_integer([True]) and not get("shift").output_integer([False])


def test_embed_padding_rows_are_zero():
    table = normal(3, N)
    out = fwd("embed", np.array([2, -1]), table)
    np.testing.assert_array_equal(out, [table[2], [0.0, 0.0]])
    with pytest.raises(ValueError, match="out of range"):
        fwd("embed", np.array([3]), table)


def test_class_losses_reject_a_class_out_of_range():
    for op in ("cross_entropy_logits", "cross_entropy", "nll"):
        with pytest.raises(ValueError, match="out of range"):
            fwd(op, normal(2, 3), np.array([1, 3]))


def test_matmul_is_w_times_each_row():
    w, x = normal(K, N), normal(T, B, N)
    np.testing.assert_allclose(fwd("matmul", w, x)[2, 1], w @ x[2, 1])


def test_dropout_is_identity_in_eval_and_inverted_in_training():
    x = np.ones((200, 50))
    assert fwd("dropout", x, p=0.3) is x
    out = fwd("dropout", x, p=0.3, ctx=Ctx(train=True, rng=np.random.default_rng(0)))
    assert set(np.unique(out)) <= {0.0, 1 / 0.7}
    assert (out == 0).mean() == pytest.approx(0.3, abs=0.02)


def test_argmax_gives_int64_classes():
    out = fwd("argmax", np.array([[0.1, 0.7, 0.2], [3.0, -1.0, 0.0]]))
    assert out.dtype == np.int64 and out.tolist() == [1, 0]


def test_word_dropout_replaces_words_by_unk_and_keeps_padding():
    ids = np.array([[0, 1, 5, 7, 9]] * 200)
    out = fwd("word_dropout", ids, p=0.5, ctx=Ctx(train=True, rng=np.random.default_rng(0)))
    assert (out[:, :2] == ids[:, :2]).all()              # <pad> and <unk> stay
    assert set(np.unique(out[:, 2:])) <= {1, 5, 7, 9}
    assert 0.4 < (out[:, 2:] == 1).mean() < 0.6
    assert (fwd("word_dropout", ids, p=0.5) == ids).all()   # evaluation: unchanged
