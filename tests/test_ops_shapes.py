"""Shape rules: per-example shapes in, per-example shape out, ShapeError on misuse.

Dims are ints or symbolic variables; ``Dims`` below is a minimal union-find
solver standing in for the real one.
"""
from __future__ import annotations

import pytest

from nnspec.ops import REGISTRY, ShapeError, get


class Var:
    def __init__(self, hint=""):
        self.hint = hint

    def __repr__(self):
        return self.hint or "?"


class Dims:
    """Union-find over ints and Vars, enough for the DimSolver protocol."""

    def __init__(self):
        self.parent = {}

    def find(self, d):
        while isinstance(d, Var) and d in self.parent:
            d = self.parent[d]
        return d

    def unify(self, a, b, why=""):
        a, b = self.find(a), self.find(b)
        if isinstance(a, Var):
            if a is not b:
                self.parent[a] = b
            return b
        if isinstance(b, Var):
            self.parent[b] = a
            return a
        if a != b:
            raise ShapeError(f"{a} != {b}")
        return a

    def fresh(self, hint=""):
        return Var(hint)

    def value(self, d):
        d = self.find(d)
        return d if isinstance(d, int) else None


def shape(op, *shapes, dims=None, **attrs):
    return get(op).shape(list(shapes), attrs, dims or Dims())


def rejects(op, *shapes, match=None, **attrs):
    with pytest.raises(ShapeError, match=match) as err:
        shape(op, *shapes, **attrs)
    return str(err.value)


# One valid example per op: a new op without a line here fails the coverage test.
VALID = [
    *[(op, [(3, 4), (3, 4)], (3, 4)) for op in ("add", "sub", "mul", "div")],
    *[(op, [(4,)], (4,)) for op in sorted(n for n, o in REGISTRY.items() if o.elementwise and o.arity == 1)],
    *[(op, [(4,)], (4,)) for op in ("softmax", "log_softmax", "dropout")],
    ("matmul", [(3, 4), (4,)], (3,)),
    ("linear", [(3, 4), (4,), (3,)], (3,)),
    ("concat", [(2,), (3,)], (5,)),
    ("slice", [(4,)], (4,)),
    ("concat_rows", [(2, 4), (3, 4)], (5, 4)),
    ("embed", [(), (10, 8)], (8,)),
    *[(op, [(4,), (4,)], ()) for op in ("mse", "bce", "bce_logits", "perceptron", "hinge")],
    *[(op, [(5,), ()], ()) for op in ("cross_entropy", "cross_entropy_logits", "nll")],
    *[(op, [(4,)], (4,)) for op in ("last", "first", "sum", "mean", "max", "shift")],
    ("argmax", [(5,)], ()),
    ("word_dropout", [()], ()),
    ("along", [(4,), (6,)], (4,)),
    ("dot", [(4,), (4,)], ()),
    ("sum_features", [(4,)], ()),
    ("softmax_steps", [()], ()),
]


@pytest.mark.parametrize("op, shapes, expected", VALID, ids=[v[0] for v in VALID])
def test_valid_shapes(op, shapes, expected):
    assert shape(op, *shapes) == expected


def test_every_op_has_a_shape_case():
    assert set(REGISTRY) - {v[0] for v in VALID} == set()


def test_dot_takes_two_vectors_of_one_size():
    assert "(3,) and (4,)" in rejects("dot", (3,), (4,))
    rejects("dot", (3, 4), (3, 4), match="two vectors")


def test_softmax_steps_takes_one_score_per_step():
    rejects("softmax_steps", (4,), match="one score per step")


# ---- elementwise broadcasting ----------------------------------------------
def test_rank0_broadcasts_against_anything():
    assert shape("mul", (), (3, 4)) == (3, 4)
    assert shape("add", (3, 4), ()) == (3, 4)
    assert shape("add", (), ()) == ()


def test_elementwise_mismatch_shows_both_shapes():
    msg = rejects("add", (3, 4), (3, 5))
    assert "(3, 4)" in msg and "(3, 5)" in msg


def test_elementwise_needs_equal_ranks():
    msg = rejects("mul", (4,), (3, 4))
    assert "(4,)" in msg and "(3, 4)" in msg


def test_elementwise_fixes_unknown_dims():
    dims, n = Dims(), Var("n")
    assert dims.value(shape("add", (n,), (7,), dims=dims)[0]) == 7
    assert dims.value(n) == 7


# ---- last-axis ops ---------------------------------------------------------
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "argmax"])
def test_last_axis_ops_reject_scalars(op):
    rejects(op, (), match=r"\(\)")


def test_argmax_drops_the_last_axis():
    assert shape("argmax", (2, 5)) == (2,)


# ---- matmul ----------------------------------------------------------------
def test_matmul_maps_last_axis_n_to_m():
    assert shape("matmul", (3, 4), (7, 4)) == (7, 3)


def test_matmul_mismatch_shows_both_shapes():
    msg = rejects("matmul", (3, 4), (5,))
    assert "(3, 4)" in msg and "(5,)" in msg


def test_matmul_needs_a_matrix_weight():
    rejects("matmul", (4,), (4,), match="weight")


def test_matmul_infers_input_size_from_weight():
    dims, n = Dims(), Var("n")
    shape("matmul", (3, 4), (n,), dims=dims)
    assert dims.value(n) == 4


# ---- concat ----------------------------------------------------------------
def test_concat_adds_last_dims_and_unifies_the_rest():
    dims, k = Dims(), Var("k")
    out = shape("concat", (k, 2), (6, 3), (6, 1), dims=dims)
    assert dims.value(out[0]) == 6 and out[1] == 6


def test_concat_mismatch_before_last_axis_shows_both_shapes():
    msg = rejects("concat", (2, 3), (4, 3))
    assert "(2, 3)" in msg and "(4, 3)" in msg


def test_concat_needs_equal_ranks():
    rejects("concat", (3,), (2, 3), match="rank")


def test_concat_asks_for_a_size_when_last_dim_is_unknown():
    rejects("concat", (3,), (Var("h"),), match="size")


# ---- embed -----------------------------------------------------------------
def test_embed_appends_the_embedding_width():
    assert shape("embed", (), (100, 16)) == (16,)


def test_embed_needs_a_matrix_table():
    rejects("embed", (), (100,), match=r"\(100,\)")


# ---- losses ----------------------------------------------------------------
def test_float_loss_mismatch_shows_both_shapes():
    msg = rejects("mse", (3,), (4,))
    assert "(3,)" in msg and "(4,)" in msg


@pytest.mark.parametrize("op", ["cross_entropy", "cross_entropy_logits", "nll"])
def test_class_loss_needs_a_class_axis_more_than_targets(op):
    msg = rejects(op, (5,), (5,))
    assert "(5,)" in msg
    rejects(op, (), ())


# ---- attributes ------------------------------------------------------------
@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_rejects_p_outside_0_1(p):
    rejects("dropout", (4,), p=p, match="p must be")
