"""Train/dev/test splits and k-fold cross-validation."""
import pytest
from hypothesis import given, settings, strategies as st

from nnspec.data import DataError, RawData, kfold, split_examples


def unsplit(n: int) -> RawData:
    return RawData({"all": {"x": list(range(n)), "y": [i % 2 for i in range(n)]}},
                   {"all": [("f", i + 1) for i in range(n)]})


def ids(raw: RawData, split: str) -> list:
    return raw.splits[split]["x"]


def test_split_fractions_disjoint_and_complete():
    raw = split_examples(unsplit(100), dev=0.1, test=0.2, seed=3)
    assert list(raw.splits) == ["train", "dev", "test"]
    assert [raw.size(s) for s in raw.splits] == [70, 10, 20]
    assert sorted(ids(raw, "train") + ids(raw, "dev") + ids(raw, "test")) == list(range(100))
    for split in raw.splits:  # origins and fields stay aligned, in file order
        assert [line - 1 for _, line in raw.origins[split]] == ids(raw, split) == sorted(ids(raw, split))
        assert raw.splits[split]["y"] == [i % 2 for i in ids(raw, split)]


def test_split_is_deterministic_by_seed():
    a, b, c = (split_examples(unsplit(50), dev=0.2, seed=s) for s in (1, 1, 2))
    assert ids(a, "dev") == ids(b, "dev") != ids(c, "dev")


def test_split_keeps_provided_splits_and_cuts_missing_ones():
    raw = RawData({"train": {"x": list(range(10))}, "test": {"x": [100]}},
                  {"train": [("f", i) for i in range(10)], "test": [("g", 1)]})
    out = split_examples(raw, dev=0.2, test=0.5)
    assert ids(out, "test") == [100] and out.size("dev") == 2 and out.size("train") == 8
    assert split_examples(raw) is raw
    assert list(split_examples(unsplit(3)).splits) == ["train"]


def test_split_errors():
    with pytest.raises(ValueError):
        split_examples(unsplit(10), dev=0.6, test=0.5)
    with pytest.raises(DataError, match="too few"):
        split_examples(unsplit(2), dev=0.1, test=0.1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 60), k=st.integers(2, 10), seed=st.integers(0, 2**32 - 1))
def test_kfold_tests_every_example_exactly_once(n, k, seed):
    tested = []
    for fold in range(k):
        raw = kfold(unsplit(n), k, fold, seed)
        assert list(raw.splits) == ["train", "test"]
        assert sorted(ids(raw, "train") + ids(raw, "test")) == list(range(n))
        assert abs(raw.size("test") - n / k) < 1
        tested += ids(raw, "test")
    assert sorted(tested) == list(range(n))


def test_kfold_deterministic_and_errors():
    assert ids(kfold(unsplit(30), 5, 2, seed=7), "test") == ids(kfold(unsplit(30), 5, 2, seed=7), "test")
    with pytest.raises(ValueError):
        kfold(unsplit(30), 5, 5)
    with pytest.raises(DataError, match="too few"):
        kfold(unsplit(3), 5, 0)
    # a user's data with its own test part, or a stream: a data error naming the file, not a crash
    with pytest.raises(DataError, match="already has a test split"):
        kfold(split_examples(unsplit(30), test=0.1), 5, 0)
    stream = RawData({"train": {"x": [[1, 2]]}}, {"train": [("f", 1)]}, stream=True)
    with pytest.raises(DataError, match="stream cannot be cross-validated"):
        kfold(stream, 2, 0)
    assert split_examples(stream) is stream
