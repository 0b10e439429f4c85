"""A compiled network with its parameters: the object programs embed.

    >>> from nnspec import Model
    >>> m = Model.from_file("specs/xor_goodfellow.nn")
    >>> m.forward({"x": [[0, 0], [0, 1], [1, 0], [1, 1]]})["y"].ravel()
    array([0., 1., 1., 0.], dtype=float32)

Feeds (the values of inputs and targets) are checked against the declared
shapes before anything runs; a mismatch is a :class:`FeedError` naming the
input, the shape given and the shape expected. The layout:

* a value that is not a sequence: an array ``(B, *shape)``, one row per example;
* a sequence (``seq``): either a *list* of per-example sequences, each
  ``(T_i, *shape)`` — lengths may differ, nnspec pads them and derives
  ``lengths`` — or a padded *time-major* array ``(T, B, *shape)`` with
  ``lengths`` (B,) giving each example's real steps (all T when omitted).
* sequences on several axes (``seq(src)``, ``seq(out)``: an encoder's and a
  decoder's) have lengths per axis: ``lengths={"src": [...], "out": [...]}``
  (an axis left out: all its steps are real), or lists of different lengths.

The list form is unambiguous. An array is always read as time-major: a
batch-major ``(B, T, *shape)`` array is caught when B or T disagrees with
another feed or with ``lengths``, but when nothing else fixes B (and
always when T == B) it cannot be told apart from shapes, so pass ``lengths``
or lists.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from .chunks import Stream
from .compiler import Compiled, compile_file, compile_program, compile_text
from .errors import Diagnostics, SpecError, did_you_mean
from .initializers import default_initializer, initialize
from .plan import Plan, ValueSpec
from .runtime import ExecOptions, Executor, RunContext, RuntimeFailure, Tape, blas_threads
from .runtime.paramblocks import flatten, join_blocks


def init_params(plan: Plan, seed: int = 0, dtype=np.float32, default_init: str | None = None) -> dict[str, np.ndarray]:
    """Parameters from the plan: literal values as given, the rest drawn from their initialisers.

    Each parameter draws from its own generator seeded by (seed, its name), so
    adding a parameter to a spec does not change the initial values of the others.
    """
    # on one BLAS thread, as every pass runs: an orthogonal matrix's QR on threads that a busy
    # machine preempts took 0.2 s where one thread takes 1 ms (to the same numbers)
    with blas_threads(1):
        return _init_params(plan, seed, dtype, default_init)


def _init_params(plan: Plan, seed: int, dtype, default_init: str | None) -> dict[str, np.ndarray]:
    params = {}
    for p in plan.params:
        if p.value is not None:
            params[p.name] = np.asarray(p.value, dtype=dtype).reshape(p.shape)
            continue
        rng = np.random.default_rng([seed, *p.name.encode()])
        if p.init != "default":
            name, args = p.init, p.init_args
        elif default_init is not None and p.role in ("weight", "recurrent"):
            name, args = default_init, {}
        else:
            name, args = default_initializer(tuple(p.shape), _init_role(p.role, p.shape))
        params[p.name] = initialize(name, tuple(p.shape), rng, dtype=dtype, **args)
    return params


def _init_role(role: str, shape) -> str | None:
    """The initialiser policy's role names (nnspec.initializers.default_initializer)."""
    return {"table": "embedding", "initial": "bias", "recurrent": "recurrent"}.get(role)


_NO_NAMES: frozenset = frozenset()   # (one empty set for every model without frozen parameters)


class FeedError(ValueError):
    """A feed that does not fit the network: the message names the input and both shapes."""


PAD_ID, IGNORE_LABEL = 0, -1  # the padding of token inputs and of target labels (as nnspec.data pads them)


def _layout(v: ValueSpec) -> str:
    """The shape a feed of ``v`` takes, as a message says it: ``(T, B, 2) time-major, or ...``."""
    dims = "".join(f", {d}" for d in v.shape)
    if v.seq:
        return f"(T, B{dims}) time-major, or a list of B sequences (T_i{dims})"
    return f"(B{dims})"


def prepare_feeds(plan: Plan, feeds: dict, lengths=None, *, dtype=np.float32,
                  need_targets: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The feeds as arrays in the runtime's layout, and the sequence lengths; :class:`FeedError` when they
    do not fit the declared inputs and targets (see the module docstring for the layout)."""
    if lengths is None and type(feeds) is dict:
        plain = _plain_feeds(_feed_facts(plan), feeds, need_targets)
        if plain is not None:
            return plain, None
    declared = {v.name: v for v in plan.inputs + plan.targets}
    if not isinstance(feeds, dict):
        raise FeedError(f"feeds are a dict from input names to values, not {type(feeds).__name__}")
    for name in feeds:
        base = name[:-len(".ahead")] if isinstance(name, str) and name.endswith(".ahead") else name
        if base not in declared:  # NAME.ahead: the tokens after a stream chunk, for shift (the training loop)
            raise FeedError(f"no input or target named {name!r}{did_you_mean(str(name), declared)}; "
                            f"the network takes {', '.join(declared) or 'no inputs'}")
    wanted = [v for v in plan.inputs] + ([v for v in plan.targets] if need_targets else [])
    missing = [v.name for v in wanted if v.name not in feeds]
    if missing:
        raise FeedError(f"no value for {', '.join(repr(m) for m in missing)}: every input needs one"
                        + (" (and every target, to compute the loss)" if need_targets else ""))
    out: dict[str, np.ndarray] = {}
    axis_of = {v.name: (v.axes or ["time"])[-1] for v in plan.inputs + plan.targets if v.seq}
    several = len(set(axis_of.values())) > 1   # several sequence axes: lengths per axis, a dict
    if several:
        if lengths is not None and not isinstance(lengths, dict):
            raise FeedError(f"this network's sequences are on several axes ({', '.join(sorted(set(axis_of.values())))}):"
                            f" lengths is a dict from axis name to the lengths on that axis")
        given = {a: _lengths_array(ls) for a, ls in (lengths or {}).items()}
        unknown = set(given) - set(axis_of.values())
        if unknown:
            raise FeedError(f"lengths for {', '.join(sorted(unknown))}, which is no axis of this network "
                            f"(its axes: {', '.join(sorted(set(axis_of.values())))})")
    else:
        given = {} if lengths is None else {None: _lengths_array(lengths)}
    derived_by: dict = {}    # axis -> (name, lengths) of its first ragged feed
    steps_by: dict = {}      # axis -> (name, T) of its first sequence array
    batch: tuple[str, int] | None = None             # the first feed that fixed B
    nested: dict = {}        # inner axis -> (name, the feed's inner lengths or None)
    for name, value in feeds.items():
        key = axis_of.get(name) if several else None   # one axis: every sequence on it
        derived, steps = derived_by.get(key), steps_by.get(key)
        v = declared.get(name)
        if v is None:
            out[name] = np.asarray(value)
            continue
        if v.nested:
            out[name], inner, words = _nested_feed(v, value)
            nested[v.axes[-1]] = (name, inner)
            if words is not None:   # a ragged feed says how many words each example has
                outer = derived_by.get(v.axes[0])
                if outer is not None and not np.array_equal(outer[1], words):
                    raise FeedError(f"{name!r} has {words.tolist()} words per example, but {outer[0]!r} "
                                    f"{outer[1].tolist()}: a word's characters go with its word")
                derived_by[v.axes[0]] = outer or (name, words)
            continue
        if v.seq and isinstance(value, (list, tuple)):
            array, ragged_lengths = _pad(v, value, dtype)
            if derived is not None and not np.array_equal(derived[1], ragged_lengths):
                i = int(np.flatnonzero(derived[1] != ragged_lengths)[0])
                raise FeedError(f"example {i} of {name!r} has {ragged_lengths[i]} steps, but of "
                                f"{derived[0]!r} {derived[1][i]}: sequences of one example have one length")
            derived_by[key] = derived or (name, ragged_lengths)
        else:
            array = _as_array(v, value)
        _check_shape(v, array)
        b = array.shape[1] if v.seq else array.shape[0]
        if batch is not None and b != batch[1]:
            raise FeedError(f"{name!r} holds {b} examples but {batch[0]!r} holds {batch[1]}: a feed of shape "
                            f"{array.shape} where {_layout(v)} is expected" + _transposed_hint(v))
        batch = batch or (name, b)
        if v.seq:
            if steps is not None and array.shape[0] != steps[1]:
                raise FeedError(f"{name!r} has {array.shape[0]} steps but {steps[0]!r} has {steps[1]}: "
                                f"sequences of one batch are padded to one length T ({_layout(v)})")
            steps_by[key] = steps or (name, array.shape[0])
        _check_ids(v, array)
        out[name] = array
    if several:
        result = {}
        for axis, (name, inner) in nested.items():
            result[axis] = _nested_lengths(name, out[name], given.get(axis), inner, steps_by, batch,
                                           declared[name].axes[0])
        for axis in (set(axis_of.values()) | set(given)) - set(nested):
            ls = _check_lengths(given.get(axis), derived_by.get(axis), steps_by.get(axis), batch, out, declared)
            if ls is not None:
                result[axis] = ls
        return out, result
    return out, _check_lengths(given.get(None), derived_by.get(None), steps_by.get(None), batch, out, declared)


class _FeedFacts:
    """What the check of plain feeds reads from a plan, worked out once: each input's and target's
    wanted rank, leading axes, trailing sizes and whether all of those are numbers."""

    def __init__(self, plan: Plan):
        values = plan.inputs + plan.targets
        self.declared = {v.name: v for v in values}
        one_axis = len({(v.axes or ["time"])[-1] for v in values if v.seq}) <= 1
        self.layouts = {v.name: (len(v.shape) + 1 + int(v.seq), 1 + int(v.seq), tuple(v.shape),
                                 all(isinstance(d, int) for d in v.shape), v.seq)
                        for v in values if one_axis and not v.nested}
        self.inputs = [v.name for v in plan.inputs]
        self.everything = self.inputs + [v.name for v in plan.targets]


_FACTS: dict[int, tuple] = {}   # id(plan) -> (a weak reference to it, its _FeedFacts)


def _feed_facts(plan: Plan) -> _FeedFacts:
    kept = _FACTS.get(id(plan))
    if kept is None or kept[0]() is not plan:
        if len(_FACTS) > 64:
            _FACTS.clear()
        kept = _FACTS[id(plan)] = (weakref.ref(plan), _FeedFacts(plan))
    return kept[1]


def _plain_feeds(facts: _FeedFacts, feeds: dict, need_targets: bool) -> dict | None:
    """The feeds as they are, when each is an array of numbers in its declared layout, all of one
    batch (and sequences of one T, on one axis), every wanted one there, no lengths given: a training
    step's case, checked in a few comparisons. None for anything else: the general path then says
    what is wrong, as it would have (ids are checked here as there, feed by feed)."""
    batch = steps = None
    layouts = facts.layouts
    for name, a in feeds.items():
        layout = layouts.get(name)
        if layout is None or type(a) is not np.ndarray or a.dtype.kind not in _NUMBERS:
            return None
        rank, lead, trail, fixed, seq = layout
        if a.ndim != rank or (a.shape[lead:] != trail if fixed else
                              any(isinstance(d, int) and n != d for n, d in zip(a.shape[lead:], trail))):
            return None
        b = a.shape[lead - 1]
        if batch is None:
            batch = b
        elif b != batch:
            return None
        if seq:
            if steps is None:
                steps = a.shape[0]
            elif a.shape[0] != steps:
                return None
    if len(feeds) < len(facts.everything) and any(
            n not in feeds for n in (facts.everything if need_targets else facts.inputs)):
        return None
    declared = facts.declared
    for name, a in feeds.items():
        _check_ids(declared[name], a)
    return dict(feeds)


def _nested_feed(v: ValueSpec, value) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A nested sequence's feed: ``(T_char, T_word * B)`` ids (word t of example b in column
    t * B + b), or a list of B examples, each a list of words, each a list of ids; the array, and for
    a list the characters of each column and the words of each example."""
    if isinstance(value, (list, tuple)):
        from .data.batching import _pad_words
        try:
            examples = [[np.asarray(w, dtype=np.int64).reshape(-1) for w in x] for x in value]
        except (TypeError, ValueError):
            raise FeedError(f"{v.name!r} is a sequence of sequences: a list of examples, each a list of "
                            f"words, each a list of character ids") from None
        if not examples or any(not x for x in examples) or any(w.size == 0 for x in examples for w in x):
            raise FeedError(f"{v.name!r}: every example needs at least one word, and every word a character")
        array, inner = _pad_words(examples)
        return array, inner, np.array([len(x) for x in examples], dtype=np.int64)
    array = _as_array(v, value)
    if array.ndim != 2:
        raise FeedError(f"{v.name!r} is a sequence of sequences: a feed of shape (T_char, T_word * B), "
                        f"word t of example b in column t * B + b, not {array.shape}")
    _check_ids(v, array)
    return array.astype(np.int64, copy=False), None, None


def _nested_lengths(name, array, given, inner, steps_by, batch, outer_axis) -> np.ndarray:
    """The characters of every word of a nested feed: given (a length per column, 0 for a padding
    word), or those of its ragged feed, or all of T_char."""
    if given is not None and inner is not None and not np.array_equal(given, inner):
        raise FeedError(f"lengths for {name!r} disagree with its words' characters")
    ls = given if given is not None else inner
    if ls is None:
        ls = np.full(array.shape[1], array.shape[0], dtype=np.int64)
    if ls.shape != (array.shape[1],) or (ls.size and (ls.min() < 0 or ls.max() > array.shape[0])):
        raise FeedError(f"the lengths of {name!r}'s words are one per column of its (T_char, T_word * B) feed, "
                        f"each between 0 and its {array.shape[0]} steps")
    steps = steps_by.get(outer_axis)
    if batch is not None and steps is not None and array.shape[1] != steps[1] * batch[1]:
        raise FeedError(f"{name!r} has {array.shape[1]} words, but {steps[0]!r} has {steps[1]} steps of "
                        f"{batch[1]} examples: a column per word of each example, (T_char, T_word * B)")
    return ls


def _check_lengths(given_lengths, derived, steps, batch, out, declared):
    """The lengths of one axis: given, or derived from its ragged feeds (which must agree)."""
    if derived is not None:
        if given_lengths is not None and not np.array_equal(given_lengths, derived[1]):
            raise FeedError(f"lengths {given_lengths.tolist()} disagree with the sequences of "
                            f"{derived[0]!r} ({derived[1].tolist()} steps)")
        given_lengths = derived[1]
    if given_lengths is not None:
        if steps is None:
            raise FeedError("lengths are for sequences, and no feed is one")
        if given_lengths.shape != (batch[1],):
            raise FeedError(f"lengths has {given_lengths.size} entries, but the batch holds {batch[1]} examples "
                            f"(axis 1 of the time-major {batch[0]!r}, shape {out[batch[0]].shape})"
                            + _transposed_hint(declared[batch[0]]))
        if given_lengths.size and (given_lengths.min() < 1 or given_lengths.max() > steps[1]):
            raise FeedError(f"lengths must be between 1 and the {steps[1]} steps of the padded sequences, "
                            f"got {given_lengths.tolist()}")
    return given_lengths


def _transposed_hint(v: ValueSpec) -> str:
    return " (is it batch-major? arrays of sequences are time-major: (T, B, ...))" if v.seq else ""


def _lengths_array(lengths) -> np.ndarray:
    try:
        array = np.asarray(lengths)
    except ValueError:
        raise FeedError("lengths must be a list of integers, one per example") from None
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise FeedError(f"lengths must be a list of integers, one per example, not {array.dtype} of shape "
                        f"{array.shape}")
    return array.astype(np.int64)


_NUMBERS = "biufcm"   # the dtype kinds of np.number and bool (np.issubdtype takes microseconds)


def _as_array(v: ValueSpec, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged nested list
        hint = ("; sequences of different lengths go in a list of per-example sequences"
                if v.seq else "")
        raise FeedError(f"{v.name!r} is not a rectangular array of numbers (expected {_layout(v)}){hint}") \
            from None
    if array.dtype.kind not in _NUMBERS:
        raise FeedError(f"{v.name!r} holds {array.dtype} values; expected numbers of shape {_layout(v)}")
    return array


def _pad(v: ValueSpec, examples, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A list of per-example sequences (T_i, *shape) as a padded time-major (T, B, *shape) array."""
    if not examples:
        raise FeedError(f"{v.name!r} is an empty list: a batch holds at least one example")
    rows = []
    for i, example in enumerate(examples):
        try:
            row = np.asarray(example)
        except ValueError:
            raise FeedError(f"example {i} of {v.name!r} is not a rectangular array (each is {_layout(v)})") \
                from None
        if row.dtype == object or not (np.issubdtype(row.dtype, np.number) or row.dtype == bool):
            raise FeedError(f"example {i} of {v.name!r} holds {row.dtype} values, not numbers")
        want = 1 + len(v.shape)
        if row.ndim != want or any(isinstance(d, int) and g != d for g, d in zip(row.shape[1:], v.shape)) \
                or row.shape[0] == 0:
            expected = "(T_i" + "".join(f", {d}" for d in v.shape) + ")"
            raise FeedError(f"example {i} of {v.name!r} has shape {row.shape}, expected {expected} with T_i >= 1")
        if v.integer and not np.issubdtype(row.dtype, np.integer) and not np.all(row == np.round(row)):
            raise FeedError(f"example {i} of {v.name!r} holds ids, which are whole numbers; got {row.dtype} values")
        rows.append(row)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    fill = (IGNORE_LABEL if v.role == "target" else PAD_ID) if v.integer else 0
    kind = np.int64 if v.integer else dtype
    out = np.full((int(lengths.max()), len(rows), *rows[0].shape[1:]), fill, dtype=kind)
    for b, row in enumerate(rows):
        out[:len(row), b] = row
    return out, lengths


def _check_shape(v: ValueSpec, array: np.ndarray) -> None:
    want = len(v.shape) + 1 + int(v.seq)
    lead = 1 + int(v.seq)
    if not v.shape and not v.integer and array.ndim == want + 1 and array.shape[-1] == 1:
        return  # a real number per example may come as (..., 1): the runtime holds it so
    trailing_ok = all(not isinstance(d, int) or g == d for g, d in zip(array.shape[lead:], v.shape))
    if array.ndim != want or not trailing_ok:
        raise FeedError(f"{v.role} {v.name!r}: got shape {array.shape}, expected {_layout(v)}"
                        + (" (a batch of examples, even of one: add the batch axis)" if array.ndim == want - 1
                           else ""))


def _check_ids(v: ValueSpec, array: np.ndarray) -> None:
    """Token and class ids are whole numbers below the vocabulary size or class count."""
    if not v.integer or array.size == 0:
        return
    if array.dtype.kind not in "iu":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise FeedError(f"{v.name!r} holds ids, which are whole numbers; got {array.dtype} values")
    low = IGNORE_LABEL if v.role == "target" else 0
    high = v.card if isinstance(v.card, int) else None
    # (two reductions: no temporary arrays for the common case; the ufuncs' own, not the methods'
    # Python wrappers, which cost a microsecond each for a batch's few ids)
    if np.minimum.reduce(array, axis=None) >= low and (high is None or np.maximum.reduce(array, axis=None) < high):
        return
    bad = (array < low) | ((array >= high) if high is not None else False)
    if np.any(bad):
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        limit = f"0 to {high - 1}" if high is not None else "0 or more"
        raise FeedError(f"{v.name!r} holds id {array[at]} at {at}; its ids run from {limit}"
                        + (" (-1 marks a padding step)" if v.role == "target" else ""))


class Model:
    """Compiled plan + parameters + an executor."""

    def __init__(self, compiled: Compiled, params: dict[str, np.ndarray] | None = None, *,
                 dtype=np.float32, seed: int = 0, default_init: str | None = None,
                 options: ExecOptions | None = None):
        """``options``: the runtime's (``ExecOptions``; default all its fast paths), for A/B runs of
        one of them; the parameters are laid out for them (one flat array when ``flat_params``)."""
        # the plan and what remakes the rest: the flat equations and the graph are made again if read
        self.compiled = compiled.without_front()
        self.plan = compiled.plan
        self.dtype = np.dtype(dtype)
        self.params = params if params is not None else init_params(self.plan, seed, self.dtype, default_init)
        self.frozen = frozenset(p.name for p in self.plan.params if p.frozen) or _NO_NAMES   # (read only)
        self.executor = Executor(self.plan, self.dtype, options=options)
        opts = self.executor.options
        if opts.param_blocks and opts.flat_params:   # the dense parameters as views of one flat array
            skip = self.frozen | frozenset(self.executor.tables.shapes)   # (row gradients)
            self.executor.flat = flatten(self.plan, self.params, self.dtype, skip)
        elif opts.param_blocks:     # the gates' weights as blocks of one array each
            join_blocks(self.plan, self.params)
        self._unoptimized: Executor | None = None   # see ``values``

    @classmethod
    def from_text(cls, text: str, bindings: dict[str, int] | None = None, *, vocabs: dict | None = None,
                  read_data: bool = True, **kw) -> "Model":
        """As :meth:`from_file`; a data statement's paths are relative to the current folder."""
        compiled = sized(compile_text(text, bindings=bindings), vocabs, read_data)
        return cls(compiled, **_spec_defaults(compiled, kw))

    @classmethod
    def from_file(cls, path: str | Path, bindings: dict[str, int] | None = None, *, vocabs: dict | None = None,
                  read_data: bool = True, **kw) -> "Model":
        """The spec's network with fresh parameters (``seed``, ``dtype``, ``default_init`` as keywords).

        Sizes the data decides (``embed(w, 100)`` makes a table of ``vocab(w)`` rows, ``y : class``
        has ``classes(y)`` classes) come from ``vocabs`` — a dict from an input's or target's name
        to its vocabulary size or class count (or an ``nnspec.data.Vocab``) — else, when
        ``read_data`` and the spec has a data statement, from reading its data as ``nnspec run``
        does (same split, seed and ``min_count``). A size left undecided is a SpecError at the
        parameter it sizes.
        """
        compiled = sized(compile_file(path, bindings=bindings), vocabs, read_data)
        return cls(compiled, **_spec_defaults(compiled, kw))

    # ---- running -------------------------------------------------------------
    def run(self, feeds: dict, lengths=None, train: bool = False, rng=None, carry=None,
            need_loss: bool = True, single_use: bool = False, check_finite: bool = False) -> Tape:
        """The forward pass, keeping every value (a tape for ``executor.backward``). Feeds as in
        :meth:`forward`; :class:`FeedError` when they do not fit. ``check_finite``: every value is
        checked as it is made (a ``RuntimeFailure`` names the first that is NaN or infinite)."""
        need_loss = need_loss and self.plan.loss is not None
        feeds, lengths = prepare_feeds(self.plan, feeds, lengths, dtype=self.dtype, need_targets=need_loss)
        context = RunContext(train=train, rng=rng, check_finite=check_finite or self.executor.check_finite)
        return self.executor.forward(self.params, feeds, lengths=lengths, carry=carry, need_loss=need_loss,
                                     single_use=single_use, context=context)

    def diagnose(self, feeds: dict, lengths=None, **how) -> RuntimeFailure | None:
        """Run a forward pass again (``how``: as :meth:`run`) with every value checked: the
        ``RuntimeFailure`` of the first value that is NaN or infinite, or None if none is."""
        try:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                self.run(feeds, lengths, check_finite=True, **how)
        except RuntimeFailure as e:
            return e
        return None

    def train_step(self, feeds: dict, lengths=None, *, then, rng=None, stream: Stream | None = None,
                   continues: bool = False, single_use: bool = True):
        """One training step's forward and backward pass (in training mode): returns
        ``then(loss, grads, values)``, given the loss, the parameters' gradients (the runtime's
        own arrays: an update may overwrite them) and the tape's values. Once it returns, nothing of
        the pass is held any more, so the next step reuses its buffers. ``stream``: the state a
        stream carries between chunks (the chunk ``continues`` the last one), advanced after ``then``."""
        carry = stream.carry_into(continues) if stream is not None else None
        loss, grads, tape = self.loss_and_grads(feeds, lengths, rng=rng, carry=carry, single_use=single_use)
        result = then(loss, grads, tape.values)
        if stream is not None:
            stream.advance(tape)
        return result

    def forward(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """The declared outputs for a batch of inputs (evaluation mode: no dropout).

        ``feeds`` maps each input (and, to compute the loss as well, each target) to a batch:
        ``(B, *shape)`` for a value that is not a sequence; for a sequence either a list of B
        per-example sequences ``(T_i, *shape)`` (padded here; ``lengths`` derived) or a padded
        time-major array ``(T, B, *shape)`` with ``lengths`` (B,), each example's real steps
        (all T when omitted). Outputs of sequences come back time-major ``(T, B, ...)``; an output
        made from the parameters alone, the same for every example, as ``(B, ...)`` too.
        A feed that does not fit is a :class:`FeedError` naming it, its shape and the shape expected.
        """
        have_targets = all(t.name in feeds for t in self.plan.targets)
        tape = self.run(feeds, lengths, need_loss=have_targets)
        static = self.executor.facts.static
        # an output made from parameters alone is one value for the batch: every example's, as the rows say
        return {o: (np.repeat(tape.values[o][None], tape.batch, axis=0) if o in static else tape.values[o])
                for o in self.plan.outputs}

    def loss_and_grads(self, feeds: dict, lengths=None, rng=None, carry=None, train: bool = True,
                       single_use: bool = False):
        """(loss, gradients of the parameters, tape). ``single_use=True`` (the training loop):
        the tape is spent by this backward pass (see ``Executor.forward``), which saves memory."""
        if self.plan.loss is None:
            raise FeedError("the network has no loss to differentiate")
        with blas_threads(self.executor.options.blas_threads):   # (once, not once a pass: microseconds)
            tape = self.run(feeds, lengths, train=train, rng=rng, carry=carry, single_use=single_use)
            grads = self.executor.backward(tape, wrt=[k for k in self.params if k not in self.frozen])
        loss = float(tape.values[self.plan.loss])
        return loss, {k: grads[k] for k in self.params if k in grads and k not in self.frozen}, tape

    def gradients(self, feeds: dict, of: str | None = None, lengths=None) -> tuple[np.ndarray, dict]:
        """Value of ``of`` (the loss, else the single output) and its gradient w.r.t. every input and parameter.
        Feeds as in :meth:`forward` (with the targets when ``of`` is the loss)."""
        target = of or self.plan.loss or (self.plan.outputs[0] if len(self.plan.outputs) == 1 else None)
        if target is None:
            raise ValueError("say which value to differentiate: the network has several outputs and no loss")
        have_targets = all(t.name in feeds for t in self.plan.targets)
        tape = self.run(feeds, lengths, need_loss=have_targets or target == self.plan.loss)
        if target not in tape.values:
            raise ValueError(f"no value named {target!r}{did_you_mean(target, tape.values)}")
        value = tape.values[target]
        grads = self.executor.backward(tape, seeds={target: np.ones_like(value)})
        names = [v.name for v in self.plan.inputs + self.plan.targets if not v.integer] + list(self.params)
        return value, {n: grads[n] for n in names if n in grads}

    def parameter_count(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def values(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """Every value the network computes for ``feeds``, by its name in the graph (``h``, a cell's
        gate ``h.f``), in evaluation mode. Computed by the plan before optimisation, where no value
        is fused into another, so the gates of a library ``lstm`` are there too."""
        have_targets = all(t.name in feeds for t in self.plan.targets)
        return dict(self.trace(feeds, lengths, need_loss=have_targets and self.plan.loss is not None).values)

    def trace(self, feeds: dict, lengths=None, need_loss: bool = True) -> Tape:
        """A forward pass by the unoptimised plan (see ``values``); its tape takes ``backward``
        through ``self.unoptimized``."""
        need_loss = need_loss and self.plan.loss is not None
        feeds, lengths = prepare_feeds(self.plan, feeds, lengths, dtype=self.dtype, need_targets=need_loss)
        return self.unoptimized.forward(self.params, feeds, lengths=lengths, need_loss=need_loss)

    @property
    def unoptimized(self) -> Executor:
        """An executor of this network's plan as compiled without optimisation passes, by the
        reference engine (made once): slower than ``executor``, and it hides no value."""
        if self._unoptimized is None:
            plain = compile_program(self.compiled.program, Diagnostics(self.compiled.diags.sources),
                                    bindings=self.compiled.bindings, optimize=False)
            # the reference interpreter keeps every value inside a loop too, one per step
            self._unoptimized = Executor(plain.plan, self.dtype, options=ExecOptions.reference())
        return self._unoptimized

    # ---- parameters by their spec names ----------------------------------------
    def get(self, name: str) -> np.ndarray:
        """A copy of parameter ``name`` (changing it does not change the model; use ``set``)."""
        return self.params[self._param_name(name)].copy()

    def set(self, name: str, value) -> None:
        """Give parameter ``name`` new values, of exactly its shape, stored in the model's dtype."""
        name = self._param_name(name)
        array = np.asarray(value, dtype=self.dtype)
        shape = self.params[name].shape
        if array.shape != shape:
            raise ValueError(f"parameter '{name}' has shape {list(shape)}, the new value {list(array.shape)}")
        self.params[name] = array.copy()

    # ---- pictures: a notebook shows a model, and draws its graph with values and gradients ----
    def draw(self, at: dict | None = None, of: str | None = None, unroll: int | None = None):
        """The computation graph as a picture. ``at`` (one example's inputs, e.g. ``{"a": 3}``, or a
        sequence ``{"w": [4, 7, 2]}``): each node shows its value and the gradient of ``of`` (the loss,
        else the single output); a sequence is drawn unrolled over its steps (or ``unroll`` of them)."""
        from .display import draw, graph_at
        return draw(self.compiled, unroll=unroll or 0) if at is None else graph_at(self, at, of, unroll)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.compiled.name}: {self.compiled.kind}, "
                f"{self.parameter_count():,} parameters, {self.dtype}>")

    def _repr_html_(self) -> str:
        from .display import model_html
        return model_html(self)

    def _param_name(self, name: str) -> str:
        if name not in self.params:
            raise KeyError(f"no parameter '{name}'{did_you_mean(name, self.params)}; "
                           f"the parameters are {', '.join(self.params)}")
        return name


def _spec_defaults(compiled: Compiled, kw: dict) -> dict:
    """The spec's ``train`` block decides dtype, seed and initialiser unless the caller does:
    ``Model.from_file`` then builds the same model ``open_session`` does."""
    from .settings import settings_from_block
    settings = settings_from_block(compiled.flat.train, compiled.diags)
    compiled.diags.raise_if_errors()
    return {"dtype": np.dtype(settings.dtype), "seed": settings.seed, "default_init": settings.init, **kw}

def sized(compiled: Compiled, vocabs: dict | None = None, read_data: bool = True) -> Compiled:
    """The compiled spec with every size the data decides bound (see :meth:`Model.from_file`)."""
    if _all_sized(compiled):
        return compiled
    bindings = dict(compiled.bindings)
    if vocabs:
        bindings.update(bindings_from_vocabs(compiled.plan, vocabs))
    elif read_data and compiled.flat.data is not None:
        from .dataset import bind_for_settings
        from .settings import settings_from_block
        settings = settings_from_block(compiled.flat.train, compiled.diags)
        bindings.update(bind_for_settings(compiled.flat, compiled.plan, settings, compiled.diags).bindings)
    again = compile_program(compiled.program, Diagnostics(compiled.diags.sources), bindings=bindings)
    unsized = [p for p in again.plan.params if not all(isinstance(d, int) for d in p.shape)]
    if unsized:
        diags = Diagnostics(compiled.diags.sources)
        how = ("give Model.from_file(..., vocabs={name: size}) for the inputs and targets whose data decides it"
               + ("" if compiled.flat.data is not None else ", or add a data statement to the spec"))
        for p in unsized:
            shape = ", ".join(str(d) for d in p.shape)
            diags.error(f"the size of '{p.name}' ([{shape}]) is decided by the data; {how}",
                        again.graph.info(p.name).span if p.name in again.graph.g else None)
        raise SpecError(diags)
    return again


def bindings_from_vocabs(plan: Plan, vocabs: dict) -> dict[str, int]:
    """``{"w": 19674, "y": 17}`` (or Vocab objects) as the compiler's ``vocab(w)`` / ``classes(y)`` sizes."""
    declared = {v.name: v for v in plan.inputs + plan.targets}
    out = {}
    for name, size in vocabs.items():
        v = declared.get(name)
        if v is None:
            raise FeedError(f"vocabs: no input or target named {name!r}{did_you_mean(str(name), declared)}")
        size = len(size) if hasattr(size, "itos") else size
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise FeedError(f"vocabs: the size of {name!r} must be a positive integer or a Vocab, not {size!r}")
        out[size_binding(v)] = int(size)
    return out


TEXT_ELEMS = ("token", "char", "bag", "char_bag")  # the inputs a vocabulary of words or characters sizes


def size_binding(v: ValueSpec) -> str:
    """The size a vocabulary decides for an input or target: ``vocab(w)`` for text, else ``classes(y)``."""
    return f"{'vocab' if v.elem in TEXT_ELEMS else 'classes'}({v.name})"


def _all_sized(compiled: Compiled) -> bool:
    return all(isinstance(d, int) for p in compiled.plan.params for d in p.shape)
