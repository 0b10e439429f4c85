"""Decoding with the very spec a decoder was trained with: greedy and beam search.

The spec declares its decoder once (nnspec/decoding.py)::

    decode tgt from p, start "<s>", end "</s>", max 30

In training ``tgt`` is the gold sequence ``<s> y1 .. yn </s>`` and ``p`` at step t reads it only
before t (teacher forcing). Decoding writes ``tgt`` itself: the start symbol first, then at each
step a token chosen from ``p`` at that step, until the end symbol or ``max`` tokens. Every step
runs the training computation itself (no second implementation of the decoder to keep in
agreement), but not all of it: the values that do not depend on the decoded input (the encoder,
its attention keys) are computed once per source and given to the later passes, and each later
pass runs the decoder over two steps only, from the states its loops had (:class:`_Incremental`).
A network whose decoder that cannot split so (:func:`stepwise`) is rerun whole over the tokens so
far at each step (:class:`_Steps`, also the oracle the incremental decoding is tested against).

A sequence's score is its log-probability: the sum over the written tokens (the end symbol
included) of log p(token | source, the tokens before). Beam search ranks sequences of different
lengths by that score divided by GNMT's length penalty (Wu et al. 2016), lp(n) = ((5 + n) / 6) ** alpha
for n scored tokens: a log-probability only falls as a sequence grows, so undivided (alpha 0) it
favours short outputs. Never written: ``<pad>``, ``<unk>`` and the start symbol.
Functions here work on token ids; :func:`symbol_ids` gives the ids of the declared symbols in a
vocabulary.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from . import chunks
from .data.vocab import PAD_ID, UNK_ID
from .decoding import Decoder, autoregressive
from .model import FeedError, Model, prepare_feeds
from .ops import REGISTRY
from .plan import LoopStep

__all__ = ["Hypothesis", "greedy", "greedy_steps", "sample", "beam_search", "symbol_ids", "autoregressive",
           "gnmt_penalty", "DEFAULT_LENGTH_PENALTY", "sequence_score", "Decoded", "decode_texts", "source_inputs",
           "attention_weights", "attention_maps", "stepwise"]


DEFAULT_LENGTH_PENALTY = 0.6     # alpha: GNMT's usual value, and the best of 0, 0.6, 1 and 2 on lemmatizer dev words


def gnmt_penalty(n: int, alpha: float) -> float:
    """GNMT's length penalty lp(n) = ((5 + n) / 6) ** alpha of a sequence of n scored tokens; beam
    search ranks by log p / lp. 1 at n = 1; alpha 0: no normalisation; alpha 1: close to the mean
    log-probability per token for long sequences."""
    return ((5.0 + n) / 6.0) ** alpha


def checked_length_penalty(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (np.isfinite(alpha) and alpha >= 0):
        raise FeedError(f"length_penalty: a number of at least 0 (0: rank by plain log-probability), got {alpha!r}")
    return float(alpha)


@dataclass
class Hypothesis:
    """One decoded sequence: ``tokens`` (ids, without the start and end symbols), ``score`` (the sum
    of the log-probabilities of its tokens and of the end symbol), ``ended``: whether it stopped at
    the end symbol (else at the maximum length)."""
    tokens: list[int]
    score: float
    ended: bool
    steps: list[float] = field(default_factory=list, repr=False)   # log p of each written token

    @property
    def length(self) -> int:
        return len(self.tokens)

    def normalized(self, alpha: float) -> float:
        """The score beam search ranks by: ``score`` over :func:`gnmt_penalty` of the tokens it
        scores (the written ones and the end symbol if written)."""
        return self.score / gnmt_penalty(len(self.steps), alpha)


def symbol_ids(decoder: Decoder, vocab) -> tuple[int | None, int]:
    """The ids of the declared start (None when there is none) and end symbols in ``vocab``, the
    decoded input's vocabulary (the data layer puts them in every training sequence)."""
    missing = [s for s in (decoder.start, decoder.end) if s is not None and s not in vocab.stoi]
    if missing:
        raise FeedError(f"the vocabulary of '{decoder.input}' has no {' and no '.join(missing)}: it was not built "
                        f"from data framed by the decode declaration (train again with this spec)")
    return (vocab.stoi[decoder.start] if decoder.start is not None else None), vocab.stoi[decoder.end]


def _decoder(model: Model) -> Decoder:
    decoder = model.compiled.decoder
    if decoder is None:
        raise FeedError("this network declares no decoder; say which token input is fed back from which "
                        "prediction, e.g. 'decode tgt from p, start \"<s>\", end \"</s>\", max 30'")
    return decoder


class _Steps:
    """The forward passes of one decoding: the other inputs prepared once, and the log-probabilities
    of the next token after given prefixes, each of a given example (only the hypotheses still
    alive are computed: the examples and beams that have ended drop out of the batch).

    Decoding asks for the next token's log-probabilities of a set of hypotheses (``begin``: one
    empty prefix per example; ``extend``: each new hypothesis a previous one, its ``parent``, with one
    token more). This class answers by recomputing the whole network over each prefix: the
    training computation itself, the oracle :class:`_Incremental` is tested against."""

    def __init__(self, model: Model, feeds: dict, lengths):
        self.model, self.decoder = model, _decoder(model)
        if self.decoder.input in feeds:
            raise FeedError(f"'{self.decoder.input}' is what decoding writes; give only the other inputs")
        batch = _batch_size(model.plan, feeds)
        dummy = {**feeds, self.decoder.input: np.zeros((1, batch), dtype=np.int64)}
        given = lengths
        if isinstance(lengths, dict):
            given = {**lengths, self.decoder.axis: np.ones(batch, dtype=np.int64)}
        arrays, lens = prepare_feeds(model.plan, dummy, given, dtype=model.dtype)
        self.batch = batch
        self.axis_of = {v.name: (v.axes or ["time"])[-1] for v in model.plan.inputs if v.seq}
        self.feeds = {k: a for k, a in arrays.items() if k != self.decoder.input}
        if isinstance(lens, dict):
            self.lengths = {a: np.asarray(v) for a, v in lens.items() if a != self.decoder.axis}
        else:
            self.lengths = None        # the decoder's axis is the network's only one

    def other_inputs(self, rows: np.ndarray, trim: bool = True) -> tuple[dict, dict]:
        """The inputs other than the decoded one, and their axes' lengths, of the examples ``rows``
        (``trim``: no longer than the longest of them)."""
        feeds, lengths = {}, {}
        if self.lengths is not None:
            lengths = {a: v[rows] for a, v in self.lengths.items()}
        for k, a in self.feeds.items():
            if k not in self.axis_of:
                feeds[k] = a[rows]
                continue
            a = a[:, rows]
            if trim and self.axis_of[k] in lengths:
                a = a[:max(int(lengths[self.axis_of[k]].max()), 1)]
            feeds[k] = a
        return feeds, lengths

    def run(self, feeds: dict, lengths: dict, ids: np.ndarray, **how):
        """One forward pass fed ``ids`` (T, N) as the decoded input, all T long."""
        full = np.full(ids.shape[1], ids.shape[0], dtype=np.int64)
        lengths = {**lengths, self.decoder.axis: full} if self.lengths is not None else full
        return self.model.executor.forward(self.model.params, {**feeds, self.decoder.input: ids},
                                           lengths=lengths, need_loss=False, **how)

    def scores_to_log_probs(self, tape) -> np.ndarray:
        """(N, V) float64 log-probabilities at the last step of the pass's decoded axis."""
        s = np.asarray(tape.values[self.decoder.scores][-1], dtype=np.float64)
        s = s.reshape(s.shape[0], -1)
        if self.decoder.scores_kind == "logits":
            s = s - s.max(-1, keepdims=True)
            return s - np.log(np.exp(s).sum(-1, keepdims=True))
        if self.decoder.scores_kind == "probabilities":
            with np.errstate(divide="ignore"):
                return np.log(s)
        return s   # log_probabilities

    def log_probs(self, ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(N, V) float64: log p(next token | prefix) for each column of ``ids`` (T, N), all T long,
        the prefix of example ``rows[i]`` in column i."""
        feeds, lengths = self.other_inputs(rows)
        return self.scores_to_log_probs(self.run(feeds, lengths, ids))

    # ---- hypotheses: begin with empty prefixes, extend by a token each -------------------------
    def begin(self, rows: np.ndarray, start: int | None):
        state = {"rows": rows, "written": np.zeros((0, len(rows)), dtype=np.int64), "start": start}
        return self.log_probs(_fed(start, state["written"]), rows), state

    def extend(self, state, parents: np.ndarray, tokens: np.ndarray):
        rows = state["rows"][parents]
        written = np.concatenate([state["written"][:, parents], tokens[None].astype(np.int64)])
        new = {**state, "rows": rows, "written": written}
        return self.log_probs(_fed(state["start"], written), rows), new


class _Incremental(_Steps):
    """Decoding that computes each step once. The values that do not depend on the decoded input
    (the encoder, its attention keys: everything not on the decoder's axis) are computed by the first
    pass and given to every later one; a later pass runs the decoder over two steps only, the last
    token written and the step that predicts the next one, its loops starting from the states they
    had two steps before (``carry``) and a read of the step before the window (``ye[t-1]``) given
    the value that pass had there (``chunks.History``). It computes what :class:`_Steps` computes
    (tests compare them), for decoders whose values at a step depend on earlier steps only through
    forward loops and reads one step back; :func:`stepwise` says whether a network's does."""

    def __init__(self, model: Model, feeds: dict, lengths, parts: "_DecoderParts"):
        super().__init__(model, feeds, lengths)
        self.parts = parts

    def _batch_rows(self, values: dict, parents: np.ndarray) -> dict:
        return {k: np.take(v, parents, axis=self.parts.batch_axis[k]) for k, v in values.items()}

    def _pass(self, state, ids: np.ndarray, first: int, carry: dict | None):
        """Run the decoder over the steps ``first``.. of ``ids`` (T, N); the state it leaves."""
        tape = self.run(state["feeds"], state["lengths"], ids[first:], carry=carry, given=state["given"])
        q = ids.shape[0] - 1                                   # the step predicted
        finals = {k: tape.final_states[k].copy() for k in self.parts.states}
        before = q - 1 - first                                 # the window's index of step q - 1
        history = ({k: np.array(tape.values[k][before]) for k in self.parts.looked_back}
                   if before >= 0 else None)
        return self.scores_to_log_probs(tape), finals, history, tape

    def begin(self, rows: np.ndarray, start: int | None):
        feeds, lengths = self.other_inputs(rows)
        written = np.zeros((0, len(rows)), dtype=np.int64)
        state = {"rows": rows, "written": written, "start": start, "feeds": feeds, "lengths": lengths,
                 "given": None}
        log_p, finals, history, tape = self._pass(state, _fed(start, written), 0, None)
        state["given"] = {k: np.array(tape.values[k]) for k in self.parts.independent}
        state.update(finals=finals, finals_before=None, history=history)
        return log_p, state

    def extend(self, state, parents: np.ndarray, tokens: np.ndarray):
        written = np.concatenate([state["written"][:, parents], tokens[None].astype(np.int64)])
        rows = state["rows"][parents]
        feeds = {k: np.take(a, parents, axis=1 if k in self.axis_of else 0) for k, a in state["feeds"].items()}
        new = {"rows": rows, "written": written, "start": state["start"], "feeds": feeds,
               "lengths": {a: v[parents] for a, v in state["lengths"].items()},
               "given": self._batch_rows(state["given"], parents)}
        ids = _fed(state["start"], written)
        q = ids.shape[0] - 1
        carry, first = None, 0
        if state["finals_before"] is not None and (state["history"] is not None or not self.parts.looked_back):
            first = q - 1                                      # the states at q - 2 are known
            carry = {k: v[parents] for k, v in state["finals_before"].items()}
            for k, v in (state["history"] or {}).items():
                row = v[parents][None]
                carry[chunks.history_key(k)] = chunks.History(row, np.ones(row.shape[:2], dtype=bool))
        log_p, finals, history, _ = self._pass(new, ids, first, carry)
        new.update(finals=finals, finals_before={k: v[parents] for k, v in state["finals"].items()},
                   history=history)
        return log_p, new


@dataclass(frozen=True)
class _DecoderParts:
    """How a network splits for step-by-step decoding: the values independent of the decoded input
    that the decoder reads (computed once), the batch axis of each, the decoder loops' states (carried) and the values read
    one step back from outside a loop (given the step before a pass's window)."""
    independent: frozenset
    batch_axis: dict
    states: tuple
    looked_back: tuple


def stepwise(model: Model) -> _DecoderParts | None:
    """The split of ``model``'s network for step-by-step decoding, or None when its decoder's values
    at a step depend on other steps than through forward loops over the decoder's axis and reads
    of the step before (a reduction or softmax over that axis, a backward loop over it, a read two
    steps back): such a network is decoded by recomputing it whole at each step."""
    decoder = _decoder(model)
    facts = model.executor.facts
    plan = model.plan
    dependent = {decoder.input}
    states, looked_back = [], []
    for step in plan.steps:
        body = step.body if isinstance(step, LoopStep) else [step]
        reads = [src for b in body for src, _ in b.inputs] + (list(step.initials.values())
                                                              if isinstance(step, LoopStep) else [])
        if not any(src in dependent for src in reads):
            continue
        dependent.update(b.id for b in body)
        inside = {b.id for b in body}
        if isinstance(step, LoopStep):
            if step.direction < 0 or facts.loop_axis[step.index] != decoder.axis:
                return None
            states.extend(step.states)
        for b in body:
            op = REGISTRY[b.op]
            if op.reads_across_chunks:
                return None
            if op.over_time and b.inputs and facts.axis_of.get(b.inputs[0][0]) == decoder.axis and (
                    not isinstance(step, LoopStep)):
                return None
            for src, d in b.inputs:
                if d < -1 or d > 0:
                    return None
                if d == -1 and src not in inside:
                    if src not in facts.seq or facts.axis_of.get(src) != decoder.axis:
                        return None
                    looked_back.append(src)
    made = {b.id for step in plan.steps for b in (step.body if isinstance(step, LoopStep) else [step])}
    independent, batch_axis = set(), {}      # what the decoder reads of the rest: computed once
    for step in plan.steps:
        body = step.body if isinstance(step, LoopStep) else [step]
        if not any(b.id in dependent for b in body):
            continue
        reads = [src for b in body for src, _ in b.inputs] + (list(step.initials.values())
                                                              if isinstance(step, LoopStep) else [])
        for src in reads:
            if src in made and src not in dependent and src not in facts.static and src not in facts.whole_batch:
                independent.add(src)
                batch_axis[src] = len(facts.axes.get(src) or (("time",) if src in facts.seq else ()))
    return _DecoderParts(frozenset(independent), batch_axis, tuple(states), tuple(dict.fromkeys(looked_back)))


def _stepper(model: Model, feeds: dict, lengths, incremental: bool) -> _Steps:
    parts = stepwise(model) if incremental else None
    if parts is None:
        return _Steps(model, feeds, lengths)
    return _Incremental(model, feeds, lengths, parts)


def _allowed(log_p: np.ndarray, start: int | None) -> np.ndarray:
    """Log-probabilities with the tokens decoding never writes set to -inf."""
    log_p = log_p.copy()
    log_p[:, [PAD_ID, UNK_ID] + ([start] if start is not None else [])] = -np.inf
    return log_p


def _limit(decoder: Decoder, max_length: int | None) -> int:
    n = decoder.max_length if max_length is None else int(max_length)
    if n < 1:
        raise FeedError(f"max_length: at least 1 token, got {max_length!r}")
    return n


def _fed(start: int | None, written: np.ndarray) -> np.ndarray:
    """What the decoded input holds to predict the token after ``written`` (T, N): the start symbol
    (if any), the tokens written so far, and one step more whose prediction is read (its own token
    is never read there: the decoder reads tgt only before a step)."""
    n = written.shape[1]
    head = [np.full((1, n), start, dtype=np.int64)] if start is not None else []
    return np.concatenate(head + [written.astype(np.int64), np.full((1, n), PAD_ID, dtype=np.int64)])


def greedy(model: Model, feeds: dict, lengths=None, *, start: int | None, end: int,
           max_length: int | None = None, incremental: bool = True) -> list[Hypothesis]:
    """Each example's most probable next token at each step, until the end symbol or ``max_length``
    tokens (default: the declaration's ``max``). ``feeds``: the other inputs (as for
    :meth:`Model.forward`); ``start``/``end``: the symbols' ids (:func:`symbol_ids`).
    ``incremental``: compute the encoder once and each decoder step once (when the network allows,
    :func:`stepwise`); False recomputes the whole network over the prefix at every step."""
    return _one_at_a_time(model, feeds, lengths, start, end, max_length, lambda log_p: log_p.argmax(-1),
                          incremental)


def sample(model: Model, feeds: dict, lengths=None, *, start: int | None, end: int,
           max_length: int | None = None, temperature: float = 1.0, rng=None,
           incremental: bool = True) -> list[Hypothesis]:
    """As :func:`greedy`, but each token drawn from p at its step (sharpened or flattened by
    ``temperature``); the score is still the log-probability under p."""
    if not temperature > 0:
        raise FeedError(f"temperature: a positive number, got {temperature!r}")
    rng = rng if rng is not None else np.random.default_rng(0)

    def draw(log_p: np.ndarray) -> np.ndarray:
        z = log_p / temperature
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.array([rng.choice(p.shape[-1], p=row) for row in p])
    return _one_at_a_time(model, feeds, lengths, start, end, max_length, draw, incremental)


def _one_at_a_time(model, feeds, lengths, start, end, max_length, choose, incremental) -> list[Hypothesis]:
    steps = _stepper(model, feeds, lengths, incremental)
    limit = _limit(steps.decoder, max_length)
    out = [Hypothesis([], 0.0, False) for _ in range(steps.batch)]
    alive = np.arange(steps.batch)
    raw, state = steps.begin(alive, start)
    for t in range(limit):
        log_p = _allowed(raw, start)
        chosen = choose(log_p)
        for i, b in enumerate(alive):
            h, token = out[b], int(chosen[i])
            h.steps.append(float(log_p[i, token]))
            h.score += h.steps[-1]
            if token == end:
                h.ended = True
            else:
                h.tokens.append(token)
        going = np.array([i for i, b in enumerate(alive) if not out[b].ended], dtype=np.int64)
        if not going.size or t == limit - 1:
            break
        alive = alive[going]
        raw, state = steps.extend(state, going, chosen[going])
    return out


def beam_search(model: Model, feeds: dict, lengths=None, *, beam: int, start: int | None, end: int,
                max_length: int | None = None, incremental: bool = True,
                length_penalty: float = DEFAULT_LENGTH_PENALTY) -> list[list[Hypothesis]]:
    """The ``beam`` best sequences of each example found by beam search, best first by their score
    divided by the length penalty (:meth:`Hypothesis.normalized`; ``length_penalty``, GNMT's alpha:
    0 ranks by plain log-probability, which favours short sequences).

    Each step extends every live hypothesis by every token and keeps the ``beam`` best (all as long,
    so the penalty does not change which); one that writes the end symbol ranked above the last of
    them is finished, and the ``beam`` best finished ones are kept. An example stops when its best
    finished one scores at least what any live one could still reach (a log-probability only falls
    as a sequence grows, and the penalty divides it by at most lp(max_length)), or when ``beam`` have
    finished and every live one, as it stands, ranks below all of them (so that unlikely sequences
    ending early never stop the search while a better one is still being written), or at
    ``max_length`` tokens, where its live hypotheses are kept, unfinished. ``beam=1`` is greedy
    decoding, whatever the penalty. ``incremental``: as for :func:`greedy`."""
    if isinstance(beam, bool) or int(beam) != beam or beam < 1:
        raise FeedError(f"beam: a whole number of at least 1, got {beam!r}")
    k = int(beam)
    alpha = checked_length_penalty(length_penalty)
    steps = _stepper(model, feeds, lengths, incremental)
    limit = _limit(steps.decoder, max_length)
    longest = gnmt_penalty(limit, alpha)   # the penalty of the longest sequence there can be
    batch = steps.batch
    live: list[list[Hypothesis]] = [[Hypothesis([], 0.0, False)] for _ in range(batch)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    flat_log_p, state = steps.begin(np.arange(batch), start)
    for t in range(limit):
        flat_log_p = _allowed(flat_log_p, start)
        columns = [(b, j) for b, hyps in enumerate(live) for j in range(len(hyps))]   # the state's columns
        first = {}                                  # example -> its first column
        for i, (b, _) in enumerate(columns):
            first.setdefault(b, i)
        grown_from: list[tuple[int, int]] = []      # (the parent's column, the token) of each survivor
        for b, hyps in enumerate(live):
            if not hyps:
                continue
            log_p = flat_log_p[first[b]:first[b] + len(hyps)]
            total = np.array([h.score for h in hyps])[:, None] + log_p
            order = np.argsort(-total, axis=None, kind="stable")[:2 * k]   # k live ones survive k that end
            survivors, origins = [], []
            for i in order:
                j, token = np.unravel_index(i, total.shape)
                if not np.isfinite(total[j, token]) or len(survivors) == k:
                    break
                h = hyps[j]
                grown = Hypothesis(h.tokens + [int(token)], float(total[j, token]), False,
                                   h.steps + [float(log_p[j, token])])
                if token == end:
                    grown.tokens.pop()
                    grown.ended = True
                    finished[b].append(grown)
                else:
                    survivors.append(grown)
                    origins.append((first[b] + int(j), int(token)))
            finished[b] = sorted(finished[b], key=lambda h: -h.normalized(alpha))[:k]   # the k best kept
            done = [h.normalized(alpha) for h in finished[b]]
            best_reach = max((h.score / longest for h in survivors), default=-np.inf)
            best_now = max((h.normalized(alpha) for h in survivors), default=-np.inf)
            # no live one can overtake the best finished one; or k have finished and every live one
            # ranks below them all as it stands (a finished one worse than a live one never stops it)
            stop = max(done, default=-np.inf) >= best_reach or (len(done) >= k and min(done) >= best_now)
            live[b] = [] if stop else survivors
            if not stop:
                grown_from.extend(origins)
        if not any(live) or t == limit - 1:
            break
        parents = np.array([c for c, _ in grown_from], dtype=np.int64)
        tokens = np.array([tok for _, tok in grown_from], dtype=np.int64)
        flat_log_p, state = steps.extend(state, parents, tokens)
    results = []
    for b in range(batch):
        hyps = sorted(finished[b] + live[b], key=lambda h: -h.normalized(alpha))   # live: stopped by the length limit
        results.append(hyps[:k])
    return results


def sequence_score(model: Model, feeds: dict, tokens: list[int], lengths=None, *, start: int | None,
                   end: int) -> float:
    """The score decoding gives ``tokens`` (ids, without the symbols) followed by the end symbol, for
    a batch of one example: the sum of log p of each token given the ones before."""
    steps = _Steps(model, feeds, lengths)
    written = list(tokens) + [end]
    total = 0.0
    for t, token in enumerate(written):
        prefix = np.array(written[:t], dtype=np.int64).reshape(t, 1)
        total += float(_allowed(steps.log_probs(_fed(start, prefix), np.zeros(1, np.int64)), start)[0, token])
    return total


def greedy_steps(model: Model, feeds: dict, steps, lengths: dict | None = None) -> dict[str, np.ndarray]:
    """Greedy decoding for a given number of steps, with no symbols: ``{input: ids (T, B)}``, each
    step the argmax of a forward pass fed the tokens before it (from step 0, whatever the data's
    start symbol). The form other backends are compared by (nnspec.onnx.runner.greedy), for any
    network with one teacher-forced decoder, declared or not: the declared one, else the one the
    plan shows (:func:`autoregressive`; several undeclared ones are an error). ``steps``: an int for
    all examples, or one per example."""
    name, pred, axis = fixed_length_decoder(model.plan, model.compiled.decoder)
    n = step_counts(model.plan, feeds, steps)
    lengths = {**(lengths or {}), axis: n}
    ids = np.zeros((int(n.max()), len(n)), dtype=np.int64)
    for t in range(ids.shape[0]):
        tape = model.run({**feeds, name: ids}, lengths, need_loss=False)
        ids[t] = tape.values[pred][t].argmax(-1)
    return {name: ids}


def fixed_length_decoder(plan, declared: Decoder | None = None) -> tuple[str, str, str]:
    """(the token input fed back, the prediction it is fed from, its axis) of the one teacher-forced
    decoder of ``plan``: the declared one, else the one the plan shows (:func:`autoregressive`)."""
    pairs = [(declared.input, declared.scores)] if declared is not None else autoregressive(plan)
    if not pairs:
        raise FeedError("this network has no decoder fed by its own predictions: no token input that a "
                        "class loss predicts from its earlier steps only (e.g. embed(tgt, 32) read as [t-1])")
    if len(pairs) > 1:
        raise FeedError(f"this network has several teacher-forced decoders ({', '.join(p for p, _ in pairs)}); "
                        f"declare the one to decode, e.g. 'decode {pairs[0][0]} from p, end \"</s>\"'")
    name, pred = pairs[0]
    spec = next(v for v in plan.inputs if v.name == name)
    return name, pred, (spec.axes or ["time"])[-1]


def step_counts(plan, feeds: dict, steps) -> np.ndarray:
    """``steps`` (an int for all examples, or one per example) as a checked (B,) array."""
    batch = _batch_size(plan, feeds)
    n = np.full(batch, steps, dtype=np.int64) if np.ndim(steps) == 0 else np.asarray(steps, dtype=np.int64)
    if n.shape != (batch,) or n.size and n.min() < 1:
        raise FeedError(f"steps: one count of at least 1 for each of the {batch} examples, got {steps!r}")
    return n


def _batch_size(plan, feeds: dict) -> int:
    for v in plan.inputs:
        if v.name in feeds:
            a = feeds[v.name]
            if isinstance(a, (list, tuple)):
                return len(a)
            a = np.asarray(a)
            return a.shape[1] if v.seq else a.shape[0]
    raise FeedError("no inputs to decode from")


# ---- text in, text out: what nnspec predict and nnspec sample use ------------------------------
@dataclass
class Decoded:
    """One example's sources, as tokens (by input, in the spec's order), and what decoding wrote for
    it: ``outputs`` best first, each (tokens, score, ended), and the score each was ranked by
    (``normalized``: the score over the length penalty)."""
    sources: dict[str, list[str]]
    outputs: list[tuple[list[str], float, bool]]
    normalized: list[float] = field(default_factory=list)

    @property
    def source(self) -> list[str]:
        """The tokens of the first source."""
        return next(iter(self.sources.values()))


SOURCE_ELEMS = ("token", "char")      # a sequence of these, one input a column
BAG_ELEMS = ("bag", "char_bag")       # or a bag of them (a tag: a one-hot vector)


def source_inputs(model: Model) -> list:
    """The inputs a decoder's sources are read into, in the spec's order: every input but the decoded
    one, each a sequence of tokens or characters or a bag of them (one text column each)."""
    decoder = _decoder(model)
    others = [v for v in model.plan.inputs if v.name != decoder.input]
    readable = [v for v in others if v.view is None and not v.nested
                and ((v.seq and v.elem in SOURCE_ELEMS) or (not v.seq and v.elem in BAG_ELEMS))]
    if not others or len(readable) != len(others):
        names = ", ".join(f"{v.name} ({'derived' if v.view else 'nested' if v.nested else v.elem})"
                          for v in others if v not in readable)
        raise FeedError(f"decoding text reads each source input of '{decoder.input}' from a column of tokens: a "
                        f"sequence of tokens or characters, or a bag of tokens; this network's "
                        f"{names or 'decoder has no source input'} cannot be read so (decode from Python "
                        f"with feeds of arrays)")
    return readable


def source_tokens(model, inputs: list, text, index: int = 0, max_source: int | None = None) -> dict[str, list[str]]:
    """One example's sources as tokens, by input: ``text`` a string (with several sources, its
    tab-separated columns, in the order of ``inputs``) or one string per source. Split as each
    input's vocabulary was built. A wrong number of columns, an empty source, or a sequence of more
    than ``max_source`` tokens is a :class:`SourceError` (``index``: which example)."""
    from .data.vocab import tokenize
    if isinstance(text, str):
        columns = [text] if len(inputs) == 1 else text.split("\t")
    else:
        columns = list(text)
    if len(columns) != len(inputs) or not all(isinstance(c, str) for c in columns):
        names = ", ".join(v.name for v in inputs)
        raise SourceError(f"{len(columns)} column{'s' * (len(columns) != 1)}, but this decoder reads "
                          f"{len(inputs)} sources, one per tab-separated column: {names}", index)
    out = {}
    for v, column in zip(inputs, columns):
        vocab = model.vocabs[v.name]
        tokens = tokenize(column, level=vocab.level, lowercase=vocab.lowercase)
        if not tokens:
            raise SourceError(f"an empty source: decoding needs at least one token ('{v.name}')", index)
        if v.seq and max_source is not None and len(tokens) > max_source:
            raise SourceError(f"a source of {len(tokens)} tokens, longer than max_length {max_source} (the longest "
                              f"the model was trained to read) ('{v.name}')", index)
        out[v.name] = tokens
    return out


def source_feeds(model, inputs: list, examples: list[dict[str, list[str]]]) -> dict:
    """The feeds of a batch of examples' source tokens: a list of id sequences for a sequence input,
    token counts (B, V) for a bag (weighted as in training when the model says so)."""
    feeds = {}
    for v in inputs:
        vocab = model.vocabs[v.name]
        ids = [vocab.encode(e[v.name]) for e in examples]
        if v.seq:
            feeds[v.name] = ids
        else:
            counts = np.zeros((len(examples), len(vocab)), dtype=model.dtype)
            for row, i in enumerate(ids):
                np.add.at(counts[row], i, 1.0)
            feeds[v.name] = counts
    standardize = getattr(model, "standardize", None)     # a TrainedModel's input weighting
    return standardize(feeds) if standardize is not None else feeds


def decode_texts(model, texts: list, *, beam: int = 1, max_length: int | None = None,
                 max_source: int | None = None, batch: int = 64, temperature: float | None = None,
                 rng=None, incremental: bool = True,
                 length_penalty: float = DEFAULT_LENGTH_PENALTY) -> list[Decoded]:
    """Decode each text with a trained model (its ``vocabs``: nnspec.trained.TrainedModel): a string,
    or with several source inputs its tab-separated columns or a list of one string each
    (:func:`source_tokens`). ``beam`` 1 is greedy decoding; ``temperature`` samples instead;
    ``length_penalty``: GNMT's alpha a beam ranks by. A source decoding refuses is a
    :class:`SourceError` naming it (``index``: its position, for the caller to name the line)."""
    inputs = source_inputs(model)
    decoder = _decoder(model)
    alpha = checked_length_penalty(length_penalty)
    out_vocab = model.vocabs[decoder.input]
    start, end = symbol_ids(decoder, out_vocab)
    examples = [source_tokens(model, inputs, t, i, max_source) for i, t in enumerate(texts)]
    out = []
    for a in range(0, len(examples), batch):
        part = examples[a:a + batch]
        feeds = source_feeds(model, inputs, part)
        if temperature is not None:
            found = [[h] for h in sample(model, feeds, start=start, end=end, max_length=max_length,
                                         temperature=temperature, rng=rng, incremental=incremental)]
        elif beam == 1:
            found = [[h] for h in greedy(model, feeds, start=start, end=end, max_length=max_length,
                                         incremental=incremental)]
        else:
            found = beam_search(model, feeds, beam=beam, start=start, end=end, max_length=max_length,
                                incremental=incremental, length_penalty=alpha)
        for sources, hyps in zip(part, found):
            out.append(Decoded(sources, [(out_vocab.decode(h.tokens), h.score, h.ended) for h in hyps],
                               [h.normalized(alpha) for h in hyps]))
    return out


class SourceError(ValueError):
    """A source decoding refuses; ``index``: which of the texts."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def attention_weights(model, decoded: Decoded) -> dict[str, np.ndarray]:
    """The attention weights behind decoding's best output for one example: for each softmax over a
    source's axis computed on the decoder's axis (an ``attention`` cell's ``a``), an array (output
    tokens with </s> if written, that source's tokens). Read from a forward pass fed the output."""
    return {name: w for name, (w, _) in attention_maps(model, decoded).items()}


def attention_maps(model, decoded: Decoded) -> dict[str, tuple[np.ndarray, str]]:
    """:func:`attention_weights`, each with the source input it attends over."""
    inputs = source_inputs(model)
    decoder = _decoder(model)
    tokens, _, ended = decoded.outputs[0]
    start, end = symbol_ids(decoder, model.vocabs[decoder.input])
    written = model.vocabs[decoder.input].encode(list(tokens)).tolist() + ([end] if ended else [])
    fed = np.array(([start] if start is not None else []) + written, dtype=np.int64)
    feeds = source_feeds(model, inputs, [decoded.sources])
    values = model.values({**feeds, decoder.input: [fed]})
    axis_of = {(v.axes or ["time"])[-1]: v.name for v in inputs if v.seq}
    first = 1 if start is not None else 0          # the step that predicts <s> writes nothing
    out = {}
    for info in model.compiled.graph.nodes():
        attends = tuple(info.axes[-2:]) if info.op == "softmax_steps" else ()
        if attends[:1] == (decoder.axis,) and attends[1:] and attends[1] in axis_of and info.id in values:
            source = axis_of[attends[1]]
            w = np.asarray(values[info.id], dtype=np.float64).reshape(len(fed), len(decoded.sources[source]), -1)
            out[info.id] = (w[first:first + len(written), :, 0], source)
    return out
