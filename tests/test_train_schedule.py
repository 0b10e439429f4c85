"""Learning-rate schedules at a few steps."""
import math

import pytest

from nnspec.train.schedule import make_schedule


def test_constant():
    s = make_schedule("constant", lr=0.3)
    assert [s.lr_at(k, k // 10) for k in (0, 5, 1000)] == [0.3, 0.3, 0.3]


def test_step_decay_every_k_epochs():
    s = make_schedule("step", lr=1.0, every=2, gamma=0.5)
    assert [s.lr_at(0, e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_exponential():
    s = make_schedule("exponential", lr=2.0, gamma=0.9)
    assert s.lr_at(100, 0) == 2.0
    assert s.lr_at(0, 3) == pytest.approx(2.0 * 0.9**3)
    s = make_schedule("exponential", lr=2.0, gamma=0.9, per="step")
    assert s.lr_at(2, 7) == pytest.approx(2.0 * 0.81)


def test_cosine():
    s = make_schedule("cosine", lr=1.0, total_steps=100, min_lr=0.1)
    assert s.lr_at(0, 0) == pytest.approx(1.0)
    assert s.lr_at(50, 0) == pytest.approx(0.55)
    assert s.lr_at(25, 0) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert s.lr_at(100, 0) == pytest.approx(0.1)
    assert s.lr_at(500, 0) == pytest.approx(0.1)


def test_linear_warmup_then_constant():
    s = make_schedule("linear_warmup", lr=1.0, warmup_steps=4)
    assert [s.lr_at(k, 0) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_warmup_then_cosine():
    s = make_schedule("linear_warmup", lr=1.0, warmup_steps=10, then="cosine", total_steps=110)
    assert s.lr_at(0, 0) == pytest.approx(0.1)
    assert s.lr_at(9, 0) == pytest.approx(1.0)
    assert s.lr_at(10, 0) == pytest.approx(1.0)
    assert s.lr_at(60, 0) == pytest.approx(0.5)
    assert s.lr_at(110, 0) == pytest.approx(0.0)


def test_make_schedule_errors():
    with pytest.raises(ValueError, match="cosine"):
        make_schedule("poly", lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", lr=1.0)
    with pytest.raises(ValueError, match="accepted"):
        make_schedule("step", lr=1.0, every=2, decay=0.5)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("linear_warmup", lr=1.0, warmup_steps=5, then="cosine")
