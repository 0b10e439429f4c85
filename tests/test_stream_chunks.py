"""A language model run on a stream chunk by chunk sees the same stream as one run over all of it:
every step has its next token as target (across a chunk's end), and look-backs at a chunk's start
read the previous chunk, not padding (nnspec.chunks)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnspec.data import FieldKind, FieldSpec, Vocab
from nnspec.dataset import BoundData
from nnspec.model import Model
from nnspec.runtime import ExecOptions, Executor
from nnspec.settings import TrainSettings
from nnspec.train.loop import evaluate

V = 11
HEAD = "input w : seq of token\noutput p\n"
SPECS = {
    "feed-forward window": HEAD + """
e[4] = embed(w, 4)
x = concat(e, e[t-1], e[t-2])
p = softmax(V @ x + c)
loss cross_entropy(p, shift(w, 1))
""",
    "lstm": HEAD + """
e[4] = embed(w, 4)
h = lstm(e, H = 5)
p = softmax(V @ h + c)
loss cross_entropy(p, shift(w, 1))
""",
    "recurrence reading an earlier input": HEAD + """
e[4] = embed(w, 4)
h[5] = tanh(W @ e[t-1] + U @ h[t-1] + b)
p = softmax(V @ concat(h, e) + c)
loss cross_entropy(p, shift(w, 1))
""",
    "recurrence reaching two steps back": HEAD + """
e[4] = embed(w, 4)
h[5] = tanh(W @ e + U @ h[t-1] + R @ h[t-2] + b)
p = softmax(V @ h + c)
loss cross_entropy(p, shift(w, 1))
""",
    "look two ahead and one back by shift": HEAD + """
e[4] = embed(w, 4)
f[4] = embed(shift(w, -1), 4)
p = softmax(V @ concat(e, f) + c)
loss cross_entropy(p, shift(w, 2))
""",
}


def stream(n: int = 97) -> np.ndarray:
    return np.random.default_rng(0).integers(2, V, size=n)


def lm(name: str) -> Model:
    return Model.from_text(SPECS[name], bindings={"vocab(w)": V}, dtype=np.float64, seed=3)


def bound(ids: np.ndarray) -> BoundData:
    field = FieldSpec(name="w", kind=FieldKind.tokens)
    vocab = Vocab([str(i) for i in range(V)])
    return BoundData(fields=[field], vocabs={"w": vocab}, streams={"test": ids}, stream_field="w")


def whole_stream_loss(model: Model, ids: np.ndarray) -> float:
    return float(model.run({"w": ids[:, None]}).values[model.plan.loss])


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("bptt", [1, 2, 7, 35, 200])
def test_chunked_loss_equals_the_whole_streams(name, bptt):
    model, ids = lm(name), stream()
    settings = TrainSettings(batch=1, bptt=bptt)
    chunked = evaluate(model, bound(ids), "test", settings)
    assert chunked.loss == pytest.approx(whole_stream_loss(model, ids), rel=1e-12)
    assert chunked.metrics["perplexity"] == pytest.approx(math.exp(chunked.loss))


@pytest.mark.parametrize("bptt", [1, 3])
def test_the_reference_interpreter_reads_two_steps_back_across_chunks_too(bptt):
    fast, reference = lm("recurrence reaching two steps back"), lm("recurrence reaching two steps back")
    reference.executor = Executor(reference.plan, reference.dtype, options=ExecOptions(fast_loops=False))
    ids, settings = stream(), TrainSettings(batch=3, bptt=bptt)
    assert evaluate(reference, bound(ids), "test", settings).loss == pytest.approx(
        evaluate(fast, bound(ids), "test", settings).loss, rel=1e-12)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_every_next_token_of_the_stream_is_a_target_once(batch):
    model, ids = lm("lstm"), stream()
    pairs = []
    carry = None
    for b in bound(ids).batches("test", batch, bptt=7):
        tape = model.run(b.arrays, b.lengths, carry=carry if b.carry else None)
        carry = tape.final_states
        target = next(s.id for s in model.plan.steps if getattr(s, "op", "") == "shift")
        x, y = tape.values["w"], tape.values[target]
        real = (b.mask > 0) & (y >= 0)
        pairs += list(zip(x[real].tolist(), y[real].tolist()))
    assert sorted(pairs) == sorted(zip(ids[:-1].tolist(), ids[1:].tolist()))


def test_a_chunk_keeps_what_the_next_one_looks_back_at():
    model = lm("feed-forward window")
    tape = model.run({"w": stream(10)[:, None]})
    history = tape.final_states["e@history"]
    assert history.rows.shape == (2, 1, 4) and history.real.all()
    np.testing.assert_array_equal(history.rows, tape.values["e"][-2:])


def test_sampling_one_token_at_a_time_equals_one_pass():
    """``nnspec sample`` feeds a model one token at a time with the previous call's final states."""
    model, ids = lm("feed-forward window"), stream(12)
    whole = model.run({"w": ids[:, None]}, need_loss=False).values["p"]
    carry, steps = None, []
    for i in ids:
        tape = model.run({"w": np.array([[i]])}, carry=carry, need_loss=False)
        carry = dict(tape.final_states)
        steps.append(tape.values["p"][0])
    np.testing.assert_allclose(np.stack(steps), whole, rtol=1e-12)
