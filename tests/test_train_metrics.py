"""Metrics."""
import math

import numpy as np
import pytest

from nnspec.train.metrics import RunningMean, accuracy, confusion_matrix, perplexity


def test_accuracy_ids_scores_mask_and_padding():
    gold = np.array([0, 1, 2, 1])
    assert accuracy(np.array([0, 1, 1, 1]), gold) == 0.75
    scores = np.eye(3)[[0, 1, 1, 1]]
    assert accuracy(scores, gold) == 0.75
    assert accuracy(np.array([0, 1, 1, 1]), gold, mask=np.array([1, 1, 0, 0])) == 1.0
    assert accuracy(np.array([0, 1, 1, 1]), np.array([0, 1, -1, -1])) == 1.0  # -1 is padding
    assert math.isnan(accuracy(np.array([0]), np.array([-1])))
    with pytest.raises(ValueError):
        accuracy(np.zeros(3), np.zeros(4))


def test_confusion_matrix_rows_are_gold():
    cm = confusion_matrix(np.array([0, 1, 1, 2, 0]), np.array([0, 0, 1, 2, -1]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50)) == pytest.approx(50)
    assert perplexity(1e6) == math.inf


def test_running_mean_weighted():
    m = RunningMean()
    assert math.isnan(m.mean)
    m.add(1.0, 3)
    m.add(np.float32(3.0), 1)
    assert m.mean == pytest.approx(1.5) and m.count == 4
    m.reset()
    assert m.count == 0
