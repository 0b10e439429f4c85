"""Binding a spec's ``data`` statement to its declared inputs and targets.

Reads the source (``nnspec.data``), splits it, builds vocabularies from the
training part, encodes every part, and reports the sizes the data decides —
vocabulary sizes and class counts — as shape *bindings* for the compiler
(``vocab(w) = 19674``, ``classes(y) = 17``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .data import (SPLITS, TEXT_KINDS, Batch, DataError, Encoded, FieldKind, FieldSpec, NaiveBayesScaler, RawData,
                   Standardizer, Vocab,
                   build_vocabs, encode_split, iterate_batches, kfold, read_source, split_examples, stream_batches)
from .errors import Diagnostics, SpecError
from .expand import FlatSpec
from .plan import Plan, ValueSpec
from .syntax import ast


@dataclass
class BoundData:
    fields: list[FieldSpec]
    splits: dict[str, Encoded] = field(default_factory=dict)
    streams: dict[str, np.ndarray] = field(default_factory=dict)   # language-model token streams
    vocabs: dict[str, Vocab] = field(default_factory=dict)
    standardizers: dict[str, Standardizer | NaiveBayesScaler] = field(default_factory=dict)  # input statistics
    stream_field: str | None = None
    stream_origins: dict[str, tuple[str, int]] = field(default_factory=dict)  # where each part's stream starts

    @property
    def stream(self) -> bool:
        return self.stream_field is not None

    @property
    def bindings(self) -> dict[str, int]:
        out = {}
        for f in self.fields:
            if f.name in self.vocabs:
                key = "vocab" if f.kind in (FieldKind.tokens, FieldKind.bag, FieldKind.char_seqs) else "classes"
                out[f"{key}({f.name})"] = len(self.vocabs[f.name])
        return out

    def has(self, split: str) -> bool:
        return split in self.streams or split in self.splits

    def size(self, split: str) -> int:
        if split in self.streams:
            return len(self.streams[split])
        return len(self.splits[split]) if split in self.splits else 0

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, rng=None, by_length: bool = False,
                bptt: int | None = None, ahead: int = 1, dtype=np.float32) -> Iterator[Batch]:
        """``ahead``: how many tokens after a stream's chunk it carries (the furthest a shift looks ahead)."""
        if split in self.streams:
            self.check_stream_batch(split, batch_size)
            return stream_batches(self.streams[split], batch_size, bptt or 35,
                                  name=self.stream_field, ahead=ahead, dtype=dtype)
        return iterate_batches(self.splits[split], batch_size, shuffle=shuffle, rng=rng, by_length=by_length,
                               dtype=dtype)

    def check_stream_batch(self, split: str, batch_size: int) -> None:
        """A stream is cut into ``batch_size`` parallel streams of at least one token each."""
        n = len(self.streams[split])
        if n < batch_size:
            file, line = self.stream_origins.get(split, ("<data>", None))
            raise DataError(f"the {split} part holds {n} token{'s' * (n != 1)}, too few for batch "
                            f"{batch_size} (the stream is cut into {batch_size} parallel streams); "
                            f"lower the batch or give more text", file, line)

    def vocab_json(self) -> dict:
        return {k: v.to_json() for k, v in self.vocabs.items()}


def field_specs(values: list[ValueSpec], diags: Diagnostics | None = None) -> list[FieldSpec]:
    """The data fields the network's inputs and targets ask for."""
    fields = []
    for v in values:
        size = None
        if v.nested:   # the characters of each word: on the words' axis, with an inner axis of its own
            fields.append(FieldSpec(name=v.name, kind=FieldKind.char_seqs, role=v.role, level="char",
                                    axis=v.axes[0], inner_axis=v.axes[-1]))
            continue
        if v.elem in ("token", "char"):
            kind = FieldKind.tokens
            if not v.seq:
                raise SpecError.single(f"'{v.name}' holds one {v.elem} per example; declare it as a sequence "
                                       f"('seq of {v.elem}') or as 'bag of {v.elem}'")
        elif v.elem in ("bag", "char_bag"):
            kind = FieldKind.bag
        elif v.elem == "class":
            kind = FieldKind.classes if v.seq else FieldKind.class_
            size = v.card if isinstance(v.card, int) else None
        else:
            kind = FieldKind.vector_seq if v.seq else FieldKind.vector
            if len(v.shape) > 1:
                raise SpecError.single(f"'{v.name}' has shape {v.shape}; data fields are vectors or numbers")
            size = v.shape[0] if v.shape else None
        level = "char" if v.elem in ("char", "char_bag") else "word"
        axis = (v.axes or ["time"])[-1] if v.seq else None
        fields.append(FieldSpec(name=v.name, kind=kind, size=size, role=v.role, level=level, axis=axis))
    return fields


NGRAM_SOURCES = ("lines", "csv", "tsv")
MAX_NGRAMS = 5  # runs of more words are seen too rarely to be worth a vocabulary entry
MAX_CHAR_NGRAMS = 8  # a piece of a word longer than that is nearly the word


def ngram_option_takes(name: str, n) -> bool:
    """Whether the data keyword ``name`` (``ngrams``, ``char_ngrams``) takes the value ``n``."""
    if type(n) is not int:
        return False
    return 1 <= n <= MAX_NGRAMS if name == "ngrams" else (n == 0 or 2 <= n <= MAX_CHAR_NGRAMS)


def with_ngrams(flat: FlatSpec, fields: list[FieldSpec], diags: Diagnostics) -> list[FieldSpec]:
    """The fields with the data statement's ``ngrams = n`` and ``char_ngrams = n`` applied: every
    word-level text input (``bag of token``, ``seq of token``) then holds its words, their runs of
    2..n words, and the runs of 2..n characters of each word, each a token of its vocabulary. A
    misplaced or bad option is an error at the keyword."""
    stmt = flat.data
    keywords = {k.name: k for k in stmt.call.keywords if k.name in ("ngrams", "char_ngrams")} \
        if isinstance(stmt, ast.DataSource) else {}
    if not keywords:
        return fields
    values = {name: _python(k.value, diags) for name, k in keywords.items()}
    diags.raise_if_errors()
    texts = [f for f in fields if f.kind in TEXT_KINDS and f.role == "input"]
    decl_spans = {d.name: d.span for d in flat.decls}
    for name, keyword in keywords.items():
        n = values[name]
        what = "words" if name == "ngrams" else "characters of each word"
        if stmt.source not in NGRAM_SOURCES:
            diags.error(f"{name} applies to text read line by line or from a table ({', '.join(NGRAM_SOURCES)}), "
                        f"not to {stmt.source}(...)", keyword.span)
        elif name == "ngrams" and not ngram_option_takes(name, n):
            diags.error(f"ngrams is the longest run of words to count, a whole number from 1 to {MAX_NGRAMS}; "
                        f"got {n!r}", keyword.value.span)
        elif name == "char_ngrams" and not ngram_option_takes(name, n):
            diags.error(f"char_ngrams is the longest run of characters of a word to count, 0 (none) or a whole "
                        f"number from 2 to {MAX_CHAR_NGRAMS}; got {n!r}", keyword.value.span)
        elif not texts:
            diags.error(f"{name} adds runs of {what} to a text input, but this spec has none; declare one, "
                        "e.g. 'input x : bag of token'", keyword.span)
    diags.raise_if_errors()
    first = next(iter(keywords))
    for f in texts:
        if f.level == "char":
            doing = "joins words" if first == "ngrams" else "cuts words into pieces"
            diags.error(f"{first} {doing}, but '{f.name}' holds characters; "
                        f"declare it '{'bag' if f.kind is FieldKind.bag else 'seq'} of token'",
                        decl_spans.get(f.name, keywords[first].span))
    steps = [f for f in fields if f.role == "target" and f.is_sequence]
    for f in texts:
        if f.kind is FieldKind.tokens and steps:
            diags.error(f"with {first}, '{f.name}' holds more tokens than words, so its steps no longer match "
                        f"the steps of the target '{steps[0].name}'", keywords[first].span)
    diags.raise_if_errors()
    update = {name: values[name] for name in keywords}
    return [f.model_copy(update=update) if f in texts else f for f in fields]


def _python(e, diags: Diagnostics):
    """A data-source argument as a plain Python value."""
    if isinstance(e, ast.Number):
        if not math.isfinite(e.value):
            diags.error(f"{e.text} is too large a number", e.span)
            return None
        return int(e.value) if e.value == int(e.value) and "." not in e.text and "e" not in e.text.lower() \
            else e.value
    if isinstance(e, ast.Percent):
        return e.value
    if isinstance(e, ast.String):
        return e.value
    if isinstance(e, ast.Name):
        return e.name
    if isinstance(e, ast.Neg):
        v = _python(e.operand, diags)
        if isinstance(v, (int, float)):
            return -v
        diags.error("only a number can be negated here", e.span)
        return None
    if isinstance(e, ast.ListLit):
        return [_python(i, diags) for i in e.items]
    diags.error("a data argument must be a number, a string or a list", e.span)
    return None


def read_raw(flat: FlatSpec, fields: list[FieldSpec], diags: Diagnostics) -> RawData:
    stmt = flat.data
    if stmt is None:
        raise SpecError.single("this spec has no data statement; add 'data inline { ... }' or e.g. "
                               "'data csv(\"file.csv\")'")
    name, args, kwargs = source_call(stmt, diags)
    return read_statement(stmt, name, args, kwargs, fields, flat.base_dir, diags,
                          decl_spans={d.name: d.span for d in flat.decls})


def source_call(stmt: ast.DataSource | ast.DataInline, diags: Diagnostics) -> tuple[str, list, dict]:
    """A data statement as the reader's name and plain Python arguments."""
    if isinstance(stmt, ast.DataInline):
        name, args, kwargs = "inline", [], {kw.name: _python(kw.value, diags) for kw in stmt.values}
    else:
        name = stmt.source
        args = [_python(a, diags) for a in stmt.call.args]
        args += [(m.key, _python(m.value, diags)) for m in stmt.call.mappings]
        kwargs = {kw.name: _python(kw.value, diags) for kw in stmt.call.keywords}
    diags.raise_if_errors()
    return name, args, kwargs


def data_files(flat: FlatSpec, diags: Diagnostics) -> list[str]:
    """Every file the spec's data statement reads."""
    from .data import source_files
    if flat.data is None:
        return []
    name, args, kwargs = source_call(flat.data, diags)
    return [str(p) for p in source_files(name, args, kwargs, flat.base_dir)]


def read_statement(stmt, name: str, args: list, kwargs: dict, fields: list[FieldSpec], base_dir,
                   diags: Diagnostics, decl_spans: dict | None = None) -> RawData:
    """Run the reader; a problem with its arguments is reported at the statement."""
    from .data import SOURCES
    if name not in SOURCES:
        from .errors import did_you_mean
        diags.error(f"unknown data source '{name}'{did_you_mean(name, SOURCES)} (sources are "
                    f"{', '.join(sorted(SOURCES))})", stmt.span)
        diags.raise_if_errors()
    kwargs.pop("ngrams", None)  # vocabulary options, read by with_ngrams: the reader sees words
    kwargs.pop("char_ngrams", None)
    wanted = [f for f in fields if f.role == "input" or name != "text"]
    check_levels(stmt, name, kwargs, wanted, diags, decl_spans or {})
    try:
        return read_source(name, args, kwargs, wanted, base_dir)
    except DataError as e:
        if e.line is None and e.file.startswith("data "):  # an argument problem: point at the statement
            diags.error(e.message, stmt.span)
            diags.raise_if_errors()
        raise


def check_levels(stmt, name: str, kwargs: dict, fields: list[FieldSpec], diags: Diagnostics,
                 decl_spans: dict) -> None:
    """A ``seq of char`` input holds characters and a ``seq of token`` input words, whatever the source:
    a source that can only give the other is a located error, not a vocabulary of the wrong thing."""
    text_fields = [f for f in fields if f.kind is FieldKind.tokens and f.role == "input"]
    if name == "conllu":
        for f in text_fields:
            if f.level == "char":
                diags.error(f"'{f.name} : seq of char' would hold characters, but conllu gives the words of a "
                            f"sentence, one per step, each with its tag; declare '{f.name} : seq of token' "
                            f"(for the characters of each word, a sequence of sequences, declare "
                            f"'input c : seq of seq of char = chars({f.name})')",
                            decl_spans.get(f.name, stmt.span))
    if name == "text" and "level" in kwargs and isinstance(stmt, ast.DataSource):
        for f in text_fields:
            if kwargs["level"] in ("word", "char") and kwargs["level"] != f.level:
                declared = "seq of char" if f.level == "char" else "seq of token"
                wanted = "seq of char" if kwargs["level"] == "char" else "seq of token"
                kw = next((k for k in stmt.call.keywords if k.name == "level"), stmt)
                diags.error(f"text(level = \"{kwargs['level']}\") reads {kwargs['level']}s, but '{f.name}' is "
                            f"declared '{declared}'; declare '{f.name} : {wanted}' or drop the level "
                            f"(it follows the input's type)", kw.span)
    diags.raise_if_errors()


def bind_data(flat: FlatSpec, plan: Plan, diags: Diagnostics, *, dev: float = 0.0, test: float = 0.0,
              seed: int = 0, min_count: int = 1, normalize: bool = False, nb_scale: str | None = None,
              fold: tuple[int, int] | None = None, limit: int | None = None,
              outer: tuple[int, int] | None = None, max_length: int | None = None) -> BoundData:
    """Read, split, encode. ``max_length``: a sequence longer than that is a data error naming its line. ``fold = (k, i)`` makes fold i of k-fold cross-validation the test part;
    ``limit`` keeps the first N examples of each part (a quick run on a slice). ``outer = (k, i)``
    first drops fold i of k (what an outer cross-validation tests on, nested cross-validation): the
    rest is then the whole data set, split or folded as usual. ``nb_scale``: the bag input fed as
    naive-Bayes-weighted presence, its ratios counted on the training part only."""
    fields = field_specs(plan.inputs + plan.targets)
    if nb_scale is not None:
        check_nb_scale(flat, plan, nb_scale, diags)
    if flat.data is not None:
        fields = with_ngrams(flat, fields, diags)
    views = {v.name: v.view for v in plan.inputs if v.view is not None}
    raw = read_raw(flat, [f for f in fields if f.name not in views], diags)
    derive_views(raw, views)
    fields = frame_decoded(raw, flat.decode, fields)
    if raw.stream:
        return _bind_stream(raw, fields, limit, min_count)
    if outer is not None:
        kept = kfold(raw, outer[0], outer[1], seed)
        raw = RawData({"all": kept.splits["train"]}, {"all": kept.origins["train"]})
    if fold is not None:
        raw = kfold(raw, fold[0], fold[1], seed)
        if dev:
            raw = _carve_dev(raw, dev, seed)
    elif "all" in raw.splits:
        raw = split_examples(raw, dev=dev, test=test, seed=seed)
    if limit is not None:
        raw = _slice(raw, limit)
    present = [f for f in fields if f.name in raw.splits["train"]]
    vocabs = build_vocabs(raw.splits["train"], present, min_count, raw.origins["train"])
    for f in present:
        # The label set is part of the task (UD has 17 UPOS tags whatever a slice holds), so
        # labels come from every part; token vocabularies come from training data only.
        if f.kind in (FieldKind.class_, FieldKind.classes) and f.size is None:
            everything = [lab for cols in raw.splits.values() for lab in cols.get(f.name, [])]
            vocabs[f.name] = build_vocabs({f.name: everything}, [f], 1)[f.name]
    bound = BoundData(fields=present, vocabs=vocabs)
    for split, columns in raw.splits.items():
        if not columns or not len(raw.origins[split]):
            continue
        bound.splits[split] = encode_split(columns, present, vocabs, raw.origins[split])
        if max_length is not None:
            _check_max_length(bound.splits[split], max_length)
    if normalize:
        for f in present:
            if f.kind is FieldKind.vector and f.role == "input":
                std = Standardizer.fit(bound.splits["train"].data[f.name])
                bound.standardizers[f.name] = std
                for enc in bound.splits.values():
                    enc.data[f.name] = std.apply(enc.data[f.name])
    if nb_scale is not None:
        fit_nb_scale(flat, plan, bound, nb_scale, diags)
    return bound


def _nb_scale_span(flat: FlatSpec):
    """Where ``nb_scale`` is set: its line of the train block (a --set override has none)."""
    settings = flat.train.settings if flat.train is not None else []
    return next((s.span for s in settings if s.key == "nb_scale"), flat.train.span if flat.train else None)


def check_nb_scale(flat: FlatSpec, plan: Plan, name: str, diags: Diagnostics) -> None:
    """``nb_scale x`` needs a bag input ``x`` and one target of two classes (the ratio compares them)."""
    span = _nb_scale_span(flat)
    inputs = {v.name: v for v in plan.inputs}
    bags = [v.name for v in plan.inputs if v.elem in ("bag", "char_bag")]
    if name not in inputs:
        hint = f"; the bag input is '{bags[0]}'" if len(bags) == 1 else ""
        diags.error(f"nb_scale scales a bag input, but '{name}' is not an input of this network{hint}", span)
    elif name not in bags:
        diags.error(f"nb_scale weighs each token of a bag, but '{name}' is not a bag; declare it "
                    f"'input {name} : bag of token'", span)
    classes = [v for v in plan.targets if v.elem == "class" and not v.seq]
    if len(plan.targets) != 1 or not classes or (isinstance(classes[0].card, int) and classes[0].card != 2):
        shown = ", ".join(f"'{v.name}'" for v in plan.targets) or "none"
        diags.error(f"nb_scale compares how often each token occurs in two classes, so it needs one target "
                    f"of two classes, e.g. 'target y : class[2]' (targets: {shown})", span)
    diags.raise_if_errors()


def fit_nb_scale(flat: FlatSpec, plan: Plan, bound: BoundData, name: str, diags: Diagnostics) -> None:
    """Ratios from the training part's labels only; every part is then fed with them."""
    target = plan.targets[0].name
    train = bound.splits["train"]
    classes = len(bound.vocabs[target]) if target in bound.vocabs else int(np.max(train.data[target])) + 1
    if classes != 2:
        diags.error(f"nb_scale compares two classes, but the target '{target}' has {classes} in the data",
                    _nb_scale_span(flat))
        diags.raise_if_errors()
    scaler = NaiveBayesScaler.fit(train.data[name], train.data[target], train.bag_sizes[name])
    bound.standardizers[name] = scaler
    for enc in bound.splits.values():
        enc.bag_scales[name] = scaler


def bind_for_settings(flat: FlatSpec, plan: Plan, settings, diags: Diagnostics,
                      fold: tuple[int, int] | None = None, outer: tuple[int, int] | None = None) -> BoundData:
    """``bind_data`` with the split, seed, ``min_count``, normalisation and limit of training settings
    (nnspec.settings.TrainSettings): the data exactly as ``nnspec run`` reads it."""
    split = settings.split  # checked by TrainSettings: dev and test, below 100% together
    return bind_data(flat, plan, diags, dev=split.get("dev", 0.0), test=split.get("test", 0.0),
                     seed=settings.seed, min_count=settings.min_count, normalize=settings.normalize,
                     nb_scale=settings.nb_scale,
                     fold=fold, limit=settings.limit, outer=outer, max_length=settings.max_length)


def _check_max_length(encoded, max_length: int) -> None:
    """The first example with a sequence (on any axis) longer than ``max_length``: an error at its line."""
    for f in (f for f in encoded.fields if f.is_sequence):
        lengths = encoded.axis_lengths[f.axis or "time"]
        over = np.flatnonzero(lengths > max_length)
        if over.size:
            i = int(over[0])
            raise DataError(f"field '{f.name}': a sequence of {lengths[i]} steps, longer than max_length "
                            f"{max_length}", *encoded.origins[i])


def derive_views(raw: RawData, views: dict[str, tuple]) -> None:
    """Add each view's tokens, computed from its source input's raw tokens."""
    from .data import tokenize
    from .data.views import apply_view
    for name, (func, source, arg) in views.items():
        for cols in raw.splits.values():
            if source in cols:
                cols[name] = [apply_view(func, tokenize(x) if isinstance(x, str) else list(x), arg)
                              for x in cols[source]]


def frame_decoded(raw: RawData, decode: ast.Decode | None, fields: list[FieldSpec]) -> list[FieldSpec]:
    """The decoded input's sequences between the declared start and end symbols (``decode tgt from p,
    start "<s>", end "</s>"``): the data files hold the plain sequences. An empty one is an error at
    its line, since a decoder always writes at least one token before its end symbol. Returns the
    fields, the decoded one knowing its symbols (whole tokens, even in a sequence of characters)."""
    if decode is None:
        return fields
    from .data import tokenize
    symbols = {o.name: o.value for o in decode.options}
    f = next((f for f in fields if f.name == decode.input), None)
    if f is None:
        return fields
    framed_field = f.model_copy(update={"symbols": tuple(v for k, v in symbols.items() if k in ("start", "end"))})
    fields = [framed_field if g is f else g for g in fields]
    for split, cols in raw.splits.items():
        if decode.input not in cols:
            continue
        framed = []
        for value, origin in zip(cols[decode.input], raw.origins[split]):
            tokens = tokenize(value, f.level, f.lowercase) if isinstance(value, str) else list(value)
            if not tokens:
                raise DataError(f"field '{decode.input}': an empty sequence; the decoder is trained to write "
                                f"at least one token before its end symbol", *origin)
            framed.append(([symbols["start"]] if "start" in symbols else []) + tokens + [symbols["end"]])
        cols[decode.input] = framed
    return fields


def _slice(raw: RawData, limit: int) -> RawData:
    """At most ``limit`` examples of each part, evenly spaced (files are often sorted by class)."""
    splits, origins = {}, {}
    for k, cols in raw.splits.items():
        n = len(raw.origins[k])
        keep = np.unique(np.linspace(0, n - 1, min(limit, n)).astype(int)) if n else np.zeros(0, int)
        splits[k] = {f: [v[i] for i in keep] for f, v in cols.items()}
        origins[k] = [raw.origins[k][i] for i in keep]
    return RawData(splits, origins)


def _carve_dev(raw: RawData, dev: float, seed: int) -> RawData:
    """Split a dev part off the training part (cross-validation folds come as train/test)."""
    inner = RawData({"all": raw.splits["train"]}, {"all": raw.origins["train"]})
    inner = split_examples(inner, dev=dev, seed=seed + 1)
    splits = dict(raw.splits, train=inner.splits["train"], dev=inner.splits["dev"])
    origins = dict(raw.origins, train=inner.origins["train"], dev=inner.origins["dev"])
    return RawData(splits, origins)


def _bind_stream(raw: RawData, fields: list[FieldSpec], limit: int | None, min_count: int) -> BoundData:
    f = next(f for f in fields if f.kind is FieldKind.tokens and f.role == "input")
    train_tokens = raw.splits["train"][f.name][0][:limit]
    vocab = Vocab.build([train_tokens], min_count=min_count, level=f.level)
    bound = BoundData(fields=[f], vocabs={f.name: vocab}, stream_field=f.name)
    for split, columns in raw.splits.items():
        bound.streams[split] = vocab.encode(columns[f.name][0][:limit])
        bound.stream_origins[split] = raw.origins[split][0]
    return bound



def bind_trained(stmt, name: str, args: list, kwargs: dict, plan: Plan, vocabs: dict[str, Vocab],
                 standardizers: dict[str, Standardizer | NaiveBayesScaler], base_dir, diags: Diagnostics,
                 decode: ast.Decode | None = None) -> BoundData:
    """Read a data source whole (all its parts, as one part "all") and encode it with a trained
    model's vocabularies and input statistics: new data for a trained model. An unknown word
    becomes <unk>; an unknown label is a DataError at its line."""
    fields = field_specs(plan.inputs + plan.targets)
    views = {v.name: v.view for v in plan.inputs if v.view is not None}
    raw = read_statement(stmt, name, args, kwargs, [f for f in fields if f.name not in views], base_dir, diags)
    derive_views(raw, views)
    fields = frame_decoded(raw, decode, fields)
    parts = [p for p in ("all", *SPLITS) if p in raw.splits]
    if raw.stream:
        f = next(f for f in fields if f.kind is FieldKind.tokens and f.role == "input")
        tokens = [t for p in parts for t in raw.splits[p][f.name][0]]
        return BoundData(fields=[f], vocabs={f.name: vocabs[f.name]}, stream_field=f.name,
                         streams={"all": vocabs[f.name].encode(tokens)})
    present = [f for f in fields if f.name in raw.splits[parts[0]]]
    columns = {f.name: [x for p in parts for x in raw.splits[p][f.name]] for f in present}
    origins = [o for p in parts for o in raw.origins[p]]
    encoded = encode_split(columns, present, vocabs, origins)
    for f in present:
        if isinstance(standardizers.get(f.name), NaiveBayesScaler):
            encoded.bag_scales[f.name] = standardizers[f.name]  # applied as bags are batched
        elif f.name in standardizers:
            encoded.data[f.name] = standardizers[f.name].apply(encoded.data[f.name])
    return BoundData(fields=present, splits={"all": encoded}, vocabs=vocabs, standardizers=standardizers)
