"""Checkpoints: bit-exact round trip, atomic saves, clear errors, no pickle."""
import json
import os
import pickle

import numpy as np
import pytest

from nnspec.train import checkpoint as ckpt
from nnspec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nnspec.train.optim import Adam


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W": rng.normal(size=(4, 3)).astype(np.float32),
        "h1.Wf": rng.normal(size=(3, 3)),
        "e.table": rng.normal(size=(5, 2)).astype(np.float32),
        "count": np.arange(3, dtype=np.int64),
    }


def _trained(seed=0, steps=3):
    params = {k: v for k, v in _params(seed).items() if v.dtype.kind == "f"}
    opt = Adam(lr=0.01)
    rng = np.random.default_rng(100 + seed)
    for _ in range(steps):
        opt.step(params, {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()})
    return params, opt


def test_round_trip_bit_exact(tmp_path):
    params = _params()
    _, opt = _trained()
    rng = np.random.default_rng(42)
    rng.normal(size=10)  # move it off its seed position
    save_checkpoint(
        tmp_path / "last", params, optimizer_state=opt.state_dict(), spec_hash="abc123",
        epoch=3, step=120, metrics={"dev_acc": 0.8, "dev_loss": float("nan")}, rng=rng,
        vocabs={"words": ["<pad>", "the", "cat"]}, norm_stats={"mean": np.array([0.5, 1.5])},
        extra={"note": "hello"},
    )
    assert sorted(os.listdir(tmp_path / "last")) == ["meta.json", "weights.safetensors"]
    c = load_checkpoint(tmp_path / "last", expected_spec_hash="abc123")
    assert list(c.params) == list(params)
    for k, v in params.items():
        assert c.params[k].dtype == v.dtype
        np.testing.assert_array_equal(c.params[k], v)
    sd = opt.state_dict()
    assert c.optimizer_state.keys() == sd.keys()
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(c.optimizer_state[k], v)
        else:
            assert c.optimizer_state[k] == v
    assert (c.epoch, c.step, c.spec_hash) == (3, 120, "abc123")
    assert c.metrics["dev_acc"] == 0.8
    assert c.vocabs == {"words": ["<pad>", "the", "cat"]}
    assert c.norm_stats == {"mean": [0.5, 1.5]}
    assert c.extra == {"note": "hello"}
    np.testing.assert_array_equal(c.rng().normal(size=5), rng.normal(size=5))
    json.loads((tmp_path / "last" / "meta.json").read_text())  # plain JSON


def test_resumed_training_continues_identically(tmp_path):
    params, opt = _trained()
    save_checkpoint(tmp_path / "c", params, optimizer_state=opt.state_dict())
    c = load_checkpoint(tmp_path / "c")
    opt2 = Adam()
    opt2.load_state_dict(c.optimizer_state)
    params2 = c.params
    rng = np.random.default_rng(5)
    for _ in range(3):
        g = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
        opt.step(params, g)
        opt2.step(params2, {k: v.copy() for k, v in g.items()})
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])


def _assert_is_v1(path):
    c = load_checkpoint(path)
    assert c.epoch == 1
    np.testing.assert_array_equal(c.params["W"], _params(1)["W"])


def test_failure_between_file_writes_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "last"
    save_checkpoint(target, _params(1), epoch=1)
    real_write = ckpt._write_file

    def write_then_die(path, data):
        if path.name == ckpt.META:  # weights already written, meta not yet
            raise OSError("disk full (simulated)")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", write_then_die)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(target, _params(2), epoch=2)
    _assert_is_v1(target)
    assert os.listdir(tmp_path) == ["last"]  # temp dir cleaned up


def test_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    target = tmp_path / "last"
    save_checkpoint(target, _params(1), epoch=1)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old checkpoint moved aside, new one not yet in place
            raise KeyboardInterrupt("killed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, _params(2), epoch=2)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert not target.exists()
    _assert_is_v1(target)  # read from the set-aside copy
    save_checkpoint(target, _params(3), epoch=3)
    assert load_checkpoint(target).epoch == 3
    assert os.listdir(tmp_path) == ["last"]


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
    target = tmp_path / "last"
    save_checkpoint(target, _params(1), epoch=1)
    stale = tmp_path / ".last.tmp-dead"  # as a SIGKILL mid-write would leave it
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"partial")
    _assert_is_v1(target)
    save_checkpoint(target, _params(2), epoch=2)
    assert load_checkpoint(target).epoch == 2
    assert os.listdir(tmp_path) == ["last"]


def test_spec_hash_mismatch(tmp_path):
    save_checkpoint(tmp_path / "best", _params(), spec_hash="abcdef0123456789abcd")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "best", expected_spec_hash="fedcba9876543210fedc")
    msg = str(e.value)
    assert str(tmp_path / "best") in msg
    assert "checkpoint was made from a different spec" in msg
    assert "abcdef012345" in msg and "fedcba987654" in msg
    load_checkpoint(tmp_path / "best")  # no expectation, no check


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    d = save_checkpoint(tmp_path / "c", _params())
    weights = (d / "weights.safetensors").read_bytes()

    (d / "weights.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="weights.safetensors is corrupt"):
        load_checkpoint(d)
    (d / "weights.safetensors").write_bytes(weights[:20])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(d)

    (d / "weights.safetensors").write_bytes(weights)
    load_checkpoint(d)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        load_checkpoint(d)
    (d / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="missing meta.json") as e:
        load_checkpoint(d)
    assert str(d) in str(e.value)


def test_a_vocabulary_of_counted_labels_round_trips_and_one_with_no_entries_is_refused(tmp_path):
    from nnspec.data import Vocab
    from nnspec.train.checkpoint import TrainedMeta
    vocabs = {"y": Vocab.labels([0, 1], size=5).to_json(), "w": Vocab.build(["a b b"]).to_json()}
    d = save_checkpoint(tmp_path / "c", _params(), vocabs=vocabs)
    back = load_checkpoint(d, schema=TrainedMeta).vocabs
    assert Vocab.from_json(back["y"]).itos == [0, 1, 2, 3, 4] and Vocab.from_json(back["w"]).itos[2:] == ["b", "a"]
    meta = json.loads((d / "meta.json").read_text())
    del meta["vocabs"]["y"]["labels"]
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="one of the two"):
        load_checkpoint(d, schema=TrainedMeta)


def test_a_meta_file_beyond_the_read_limit_is_not_read(tmp_path, monkeypatch):
    d = save_checkpoint(tmp_path / "c", _params())
    monkeypatch.setenv("NNSPEC_READ_LIMIT", "100")
    with pytest.raises(CheckpointError, match=r"meta.json is not read: the file is .* more than the limit of "
                                              r"100 bytes; set NNSPEC_READ_LIMIT"):
        load_checkpoint(d)
    monkeypatch.delenv("NNSPEC_READ_LIMIT")
    load_checkpoint(d)


def test_unserialisable_metadata_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c", _params(), extra={"f": object()})
    assert not (tmp_path / "c").exists()


def test_reserved_prefix_rejected(tmp_path):
    with pytest.raises(ValueError, match="optim/"):
        save_checkpoint(tmp_path / "c", {"optim/x": np.zeros(1)})


def test_no_pickle(tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for name in ("loads", "load", "dumps", "dump"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    params, opt = _trained()
    save_checkpoint(tmp_path / "c", params, optimizer_state=opt.state_dict(),
                    rng=np.random.default_rng(0))
    c = load_checkpoint(tmp_path / "c")
    np.testing.assert_array_equal(c.params["W"], params["W"])
    assert (tmp_path / "c" / "weights.safetensors").read_bytes()[:2] != b"\x80\x04"
