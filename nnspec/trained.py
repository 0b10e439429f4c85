"""A trained model read back from its run directory, and predictions on raw text.

    >>> model = nnspec.load("runs/lstm_tagger-20261207-041500")     # spec, settings, best weights, vocabularies
    >>> model.predict("the cat sat").labels                          # {'y': ['DET', 'NOUN', 'VERB']}

A run directory is what ``nnspec run`` writes (nnspec.train.rundir): ``spec.nn`` (the spec it was
trained from), ``settings.json`` and the checkpoints ``best/`` and ``last/``. The network is compiled
from ``spec.nn`` with the sizes its vocabularies decided, so no data is read to load a model.

Raw text is split on whitespace (or into characters, for a character vocabulary), the way
the vocabulary was built. A treebank splits more finely (``can't`` -> ``ca n't``, punctuation
apart): give such input as a token list, ``tokenizer="treebank"`` (NLTK's Penn Treebank rules,
the optional ``tokenize`` extra), or ``tokenizer=`` a function of your own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .compiler import Compiled
from .data import Vocab
from .data.normalize import NaiveBayesScaler, Standardizer, input_statistics_from_json
from .errors import SpecError
from .model import TEXT_ELEMS, Model, bindings_from_vocabs
from .ops import REGISTRY
from .ops.activations import log_softmax, sigmoid
from .plan import Plan
from .settings import TrainSettings, settings_from_block
from .train.checkpoint import Checkpoint, CheckpointError, check_shapes, load_checkpoint


def load(path: str | Path, *, checkpoint: str = "best", spec: str | Path | None = None,
         dtype=None) -> "TrainedModel":
    """The trained model of a run directory (or of one checkpoint directory in it).

    ``checkpoint``: ``"best"`` (the default; ``last`` when a run kept no best) or ``"last"``.
    ``spec``: compile this spec file instead of the run's own ``spec.nn``.
    ``dtype``: the model's float type; by default the one it was trained in.
    Raises ``CheckpointError`` for a missing or damaged run, ``SpecError`` for a spec that does not compile.
    """
    from .session import load as load_program, spec_hash
    from .compiler import compile_program
    run, ck_dir = _locate(Path(path), checkpoint)
    spec_path = Path(spec) if spec is not None else run / "spec.nn"
    if not spec_path.exists():
        raise CheckpointError(f"{run}: no spec.nn in this run directory (pass spec= the spec it was trained from)")
    ck = load_checkpoint(ck_dir)
    vocabs = {k: Vocab.from_json(v) for k, v in (ck.vocabs or {}).items()}
    try:
        program, diags = load_program(spec_path)
        first = compile_program(program, diags)
    except SpecError as error:
        if spec is not None:
            raise
        # the run keeps the main spec file only: its includes are not beside it
        raise CheckpointError(f"{spec_path} does not compile on its own; pass spec= the spec file the run was "
                              f"trained from (e.g. nnspec.load(run, spec='specs/x.nn')):\n{error}") from None
    compiled = compile_with_vocabs(first, vocabs, ck_dir)
    if ck.spec_hash and ck.spec_hash != spec_hash(compiled):
        raise CheckpointError(f"{ck_dir}: checkpoint was made from a different spec (hash {ck.spec_hash}, "
                              f"{spec_path} has {spec_hash(compiled)})")
    settings = _settings(run, compiled)
    dtype = np.dtype(dtype or settings.dtype)
    expected = {p.name: tuple(p.shape) for p in compiled.plan.params}
    check_shapes(ck_dir, ck.params, expected)
    params = {k: np.asarray(ck.params[k], dtype=dtype) for k in expected}
    standardizers = {k: input_statistics_from_json(v) for k, v in (ck.norm_stats or {}).items()}
    return TrainedModel(compiled, params, dtype=dtype, vocabs=vocabs, settings=settings,
                        standardizers=standardizers, checkpoint=ck, path=run)


def _locate(path: Path, which: str) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run directory or one of its checkpoints."""
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint is 'best' or 'last', not {which!r}")
    if (path / "weights.safetensors").exists():
        return path.parent, path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run directory")
    for name in ([which, "last"] if which == "best" else [which]):
        if (path / name / "weights.safetensors").exists():
            return path, path / name
    raise CheckpointError(f"{path}: no {which}/ checkpoint in this run directory (has it trained an epoch?)")


def _settings(run: Path, compiled: Compiled) -> TrainSettings:
    """The settings the run recorded (with any --set overrides), else the spec's train block."""
    recorded = run / "settings.json"
    if recorded.exists():
        try:
            return TrainSettings.model_validate(json.loads(recorded.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:   # JSONDecodeError and pydantic's ValidationError are ValueErrors
            raise CheckpointError(f"{recorded}: not the settings of a run ({e})") from None
    settings = settings_from_block(compiled.flat.train, compiled.diags)
    compiled.diags.raise_if_errors()
    return settings


def sizes_from_vocabs(plan: Plan, vocabs: dict[str, Vocab]) -> dict[str, int]:
    """The bindings ``vocab(w)`` and ``classes(y)`` that the vocabularies of a trained model decide
    (a vocabulary of a value the spec no longer has decides nothing)."""
    declared = {v.name for v in plan.inputs + plan.targets}
    return bindings_from_vocabs(plan, {k: v for k, v in vocabs.items() if k in declared})


def compile_with_vocabs(first: Compiled, vocabs: dict[str, Vocab], checkpoint: str | Path) -> Compiled:
    """The spec compiled with the sizes a checkpoint's vocabularies decide; every parameter must
    then have a size (else the checkpoint is of another spec)."""
    from .session import recompile
    compiled = recompile(first, bindings=sizes_from_vocabs(first.plan, vocabs))
    unsized = [p.name for p in compiled.plan.params if not all(isinstance(d, int) for d in p.shape)]
    if unsized:  # a size the data decides, and the checkpoint has no vocabulary to decide it
        raise CheckpointError(f"{checkpoint}: checkpoint was made from a different spec (it has no "
                              f"vocabulary for the sizes of {', '.join(unsized)})")
    return compiled


@dataclass
class Prediction:
    """What a trained model says about one input.

    ``labels[target]``: one label per token for a sequence target, else one label.
    ``probabilities[target]``: the probability the model gives each of those labels
    (None for a perceptron, whose scores are not probabilities).
    ``scores[target]``: the whole output (per token: one probability per class).
    """
    tokens: list[str]
    labels: dict[str, list | object] = field(default_factory=dict)
    probabilities: dict[str, list[float] | float | None] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """Plain JSON values: what ``nnspec predict --json`` prints for each line."""
        out = {"tokens": self.tokens}
        for target, labels in self.labels.items():
            out[target] = _plain(labels)
            out[f"{target}_probability"] = _plain(self.probabilities.get(target))
        return out


def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float):
        return round(x, 6)
    return x


class TrainedModel(Model):
    """A :class:`Model` with what training left beside the weights: vocabularies and settings.

    ``forward``, ``gradients``, ``params``, ``get`` and ``set`` work as on any Model;
    ``predict`` takes raw text or a token list.
    """

    def __init__(self, compiled: Compiled, params: dict[str, np.ndarray], *, dtype, vocabs: dict[str, Vocab],
                 settings: TrainSettings, standardizers: dict[str, Standardizer | NaiveBayesScaler] | None = None,
                 checkpoint: Checkpoint | None = None, path: Path | None = None):
        super().__init__(compiled, params, dtype=dtype)
        self.vocabs = vocabs
        self.settings = settings
        # ``normalize true``: the network was trained on standardised inputs; feed it
        # ``standardize(feeds)`` of raw ones (``predict`` reads text, which is never standardised);
        # ``nb_scale x``: the bag x was fed as naive-Bayes-weighted presence, which ``predict`` applies
        self.standardizers = standardizers or {}
        self.checkpoint = checkpoint
        self.path = path

    @classmethod
    def from_session(cls, session) -> "TrainedModel":
        """The model of a session just trained in this process (``Trainer(...).fit()``), with its data's
        vocabularies: what ``load`` would give for the run."""
        if session.model is None or session.data is None:
            raise ValueError("the session has no model or no data: open it with its data and train it")
        return cls(session.compiled, session.model.params, dtype=session.model.dtype,
                   vocabs=dict(session.data.vocabs), settings=session.settings,
                   standardizers=dict(session.data.standardizers))

    def standardize(self, feeds: dict) -> dict:
        """Raw inputs as the network saw them in training: each input the training data
        standardised (``normalize true``) minus its training mean, over its deviation; a bag
        scaled by ``nb_scale`` as present-or-not times its naive-Bayes ratios."""
        return {k: self.standardizers[k].apply(v) if k in self.standardizers else v for k, v in feeds.items()}

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        epoch = f", epoch {self.checkpoint.epoch}" if self.checkpoint else ""
        return f"<TrainedModel {self.compiled.name}{where}{epoch}: {self.parameter_count():,} parameters>"

    def text_input(self):
        """The one text input ``predict`` fills (sequence of tokens or characters, or a bag of them)."""
        plan = self.plan
        texts = [v for v in plan.inputs if v.elem in TEXT_ELEMS and v.view is None]
        views = [v for v in plan.inputs if v.view is not None]
        if len(texts) != 1 or len(plan.inputs) != 1 + len(views):
            raise ValueError("predict takes one text input; this network's inputs are "
                             + ", ".join(v.name for v in plan.inputs) + " (use forward with arrays)")
        return texts[0], views

    def encode(self, text: str | Sequence[str],
               tokenizer: str | Callable[[str], list[str]] | None = None) -> tuple[list[str], dict]:
        """The tokens of one input (as ``predict`` splits it) and the network's feeds for them, a batch of one."""
        from .data import tokenize
        from .data.views import apply_view
        field_, views = self.text_input()
        vocab = self.vocabs[field_.name]
        if isinstance(text, str) and tokenizer not in (None, "whitespace"):
            split = TOKENIZERS.get(tokenizer) if isinstance(tokenizer, str) else tokenizer
            if not callable(split):
                raise ValueError(f"tokenizer is 'whitespace', 'treebank' or a function, not {tokenizer!r}")
            text = list(split(text))
        tokens = tokenize(text, level=vocab.level, lowercase=vocab.lowercase)
        if not tokens:
            raise ValueError("predict needs at least one token")
        ids = vocab.encode(tokens)
        if field_.elem in ("bag", "char_bag"):
            x = np.zeros((1, len(vocab)), dtype=self.dtype)
            np.add.at(x[0], ids, 1.0)
            feeds = self.standardize({field_.name: x})
        else:
            feeds = {field_.name: ids[:, None]}
            for v in views:  # suffixes, shapes, ... of the same words
                derived = apply_view(v.view[0], tokens, v.view[2])
                if v.nested:   # each word's characters: (T_char, T_word), a column per word
                    feeds[v.name] = [[self.vocabs[v.name].encode(chars) for chars in derived]]
                else:
                    feeds[v.name] = self.vocabs[v.name].encode(derived)[:, None]
        return tokens, feeds

    def predict(self, text: str | Sequence[str],
                tokenizer: str | Callable[[str], list[str]] | None = None) -> Prediction:
        """Labels and their probabilities for one input: a string, split on whitespace (characters
        for a character model) unless ``tokenizer`` is given (``"treebank"`` or a function), or a
        list of tokens as they are."""
        from .train.loop import find_heads
        from .train.nonfinite import all_finite, forward_failure
        tokens, feeds = self.encode(text, tokenizer)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a NaN is caught and named below
            tape = self.run(feeds, need_loss=False)
            heads = find_heads(self)
            finite = all_finite(tape.values[h.pred] for h in heads)
        if not finite:
            raise forward_failure(self, f"predicting {' '.join(map(str, tokens))[:60]!r}", feeds, need_loss=False)
        return self.decode(tokens, {h.pred: tape.values[h.pred] for h in heads})

    def decode(self, tokens: list[str], predictions: dict[str, np.ndarray]) -> Prediction:
        """The labels of one input from what each loss's prediction (by its value's id) holds for it."""
        from .plan import OpStep
        from .train.loop import find_heads
        field_, _ = self.text_input()
        result = Prediction(tokens)
        loss_ops = {s.id: s.op for s in self.plan.steps if isinstance(s, OpStep)}
        for h in find_heads(self):
            p = np.asarray(predictions[h.pred], dtype=np.float64)
            sequence = field_.elem in ("token", "char") and p.ndim == 3
            p = p[:, 0] if sequence else p[0]          # drop the batch of one
            probs = _probabilities(loss_ops[h.loss], p)
            if h.kind == "class":
                guess = p.argmax(-1)
                chosen = None if probs is None else np.take_along_axis(probs, guess[..., None], -1)[..., 0]
            else:
                guess = (p > h.threshold).astype(int)
                chosen = None if probs is None else np.where(guess == 1, probs, 1 - probs)
            target_vocab = self.vocabs.get(h.target)
            flat = guess.reshape(-1).tolist()
            labels = target_vocab.decode(flat) if target_vocab else flat
            chosen = None if chosen is None else chosen.reshape(-1).tolist()
            if not sequence and len(labels) == 1:
                labels, chosen = labels[0], (None if chosen is None else chosen[0])
            result.labels[h.target] = labels
            result.probabilities[h.target] = chosen
            result.scores[h.target] = probs if probs is not None else p
        return result


def treebank_tokenize(text: str) -> list[str]:
    """Penn Treebank tokenisation, as Universal Dependencies' English treebanks tokenise: ``can't``
    -> ``ca n't``, ``it's`` -> ``it 's``, punctuation apart. NLTK's rules (no data files needed);
    its ``` `` ``` and ``''`` quotes are given back as ``"``, as the treebanks write them."""
    try:
        from nltk.tokenize import NLTKWordTokenizer
    except ImportError:
        raise ImportError("the treebank tokenizer needs NLTK: pip install 'nnspec[tokenize]'") from None
    return ['"' if t in ("``", "''") else t for t in NLTKWordTokenizer().tokenize(text)]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"treebank": treebank_tokenize}


def _probabilities(op: str, p: np.ndarray) -> np.ndarray | None:
    """What a loss ``op`` reads, as probabilities (None: a step unit's input, which has none)."""
    loss = REGISTRY[op]
    if loss.prediction == "logits":
        return np.exp(log_softmax(p)) if loss.target == "class" else sigmoid(np.asarray(p, dtype=float))
    if loss.prediction == "log_probabilities":
        return np.exp(p)
    if loss.prediction == "scores":
        return None
    return p
