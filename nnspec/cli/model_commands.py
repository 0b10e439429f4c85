"""Commands that use a trained model: predict, evaluate, sample."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from ..data import Vocab, tokenize
from ..errors import UsageError
from .arguments import count, non_negative, positive, whole

MAX_BEAM, MAX_OUTPUT = 100, 10_000   # bounds on what one predict may ask of a decoder


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="apply a trained model to new input (a sentence per line)",
                       description="Each line is split on whitespace (into characters for a character model), "
                                   "the way the vocabulary was built: give treebank-tokenised text (ca n't .) "
                                   "to a tagger trained on a treebank.")
    p.add_argument("spec")
    p.add_argument("--checkpoint", required=True, help="a run directory, or its best/ or last/ checkpoint")
    p.add_argument("--input", default="-", help="a file with one example per line, split on whitespace "
                                                "(default: standard input)")
    p.add_argument("--tokenize", choices=["whitespace", "treebank"], default="whitespace",
                   help="how a line is split into words: on whitespace (the default, as the vocabulary was "
                        "built from text), or by Penn Treebank rules as UD treebanks are (can't -> ca n't; "
                        "needs the tokenize extra: pip install 'nnspec[tokenize]')")
    p.add_argument("--json", action="store_true", help="tokens, labels and each label's probability")
    p.add_argument("--onnx", metavar="MODEL", help="compute with this exported ONNX model in onnxruntime "
                                                   "(nnspec export), the run giving the vocabularies")
    decoding = p.add_argument_group("an encoder-decoder (a spec with a decode declaration): each line is a "
                                    "source, and the output sequence is written for it; with several source "
                                    "inputs, a tab-separated column for each, in the spec's order")
    decoding.add_argument("--beam", type=count(1, MAX_BEAM), default=1, metavar="K",
                          help="beam search keeping the K best sequences (default 1: greedy decoding); --json "
                               "lists all K with their scores (log-probabilities)")
    decoding.add_argument("--length-penalty", type=non_negative, default=None, metavar="ALPHA",
                          help="a beam ranks sequences by log-probability / ((5 + length) / 6) ** ALPHA, GNMT's "
                               "length penalty (default 0.6; 0: by plain log-probability, which favours short "
                               "outputs)")
    decoding.add_argument("--max-length", type=count(1, MAX_OUTPUT), metavar="N",
                          help="write at most N tokens (default: the decode declaration's max)")
    decoding.add_argument("--attention", metavar="DIR",
                          help="write a heat map of the attention weights for each line to DIR/LINE.png "
                               "(source across, output down)")
    p.set_defaults(func=cmd_predict)


def add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a trained model on a split of the spec's data, or on a file")
    e.add_argument("spec")
    e.add_argument("--checkpoint", required=True)
    on = e.add_mutually_exclusive_group()
    on.add_argument("--split", help="a part of the spec's own data: train, dev or test (the default)")
    on.add_argument("--file", help="a file read as the spec's data statement reads its files "
                                   "(same source, columns, encoding)")
    on.add_argument("--data", metavar="SOURCE",
                    help='a data source in the spec language, e.g. \'lines("pos.txt" -> 1, "neg.txt" -> 0)\'; '
                         "paths are relative to the current directory")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)


def add_sample(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a trained language model, or an output sequence "
                                      "drawn from an encoder-decoder for the source --prompt")
    s.add_argument("spec")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--prompt", default="\n", help="the text to continue; for an encoder-decoder, the source")
    s.add_argument("--length", type=whole, default=None,
                   help="tokens to write (default 300; for an encoder-decoder at most this many, by default "
                        "its decode declaration's max)")
    s.add_argument("--temperature", type=positive, default=1.0)
    s.add_argument("--seed", type=whole, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sample)


def checkpoint_dir(path: str) -> Path:
    p = Path(path)
    if (p / "best" / "weights.safetensors").exists():
        return p / "best"
    return p


def open_trained(spec: str, checkpoint: str, with_data: bool = False):
    """The spec compiled with the sizes its checkpoint was trained with, and the trained weights."""
    from ..compiler import compile_program
    from ..model import Model
    from ..session import Session, load, open_session, spec_hash
    from ..settings import settings_from_block
    from ..trained import compile_with_vocabs
    from ..train.checkpoint import CheckpointError, TrainedMeta, check_shapes, load_checkpoint
    ck = load_checkpoint(checkpoint_dir(checkpoint), schema=TrainedMeta)
    vocabs = {k: Vocab.from_json(v) for k, v in (ck.vocabs or {}).items()}
    if with_data:
        session = open_session(spec)
    else:
        program, diags = load(spec)
        compiled = compile_with_vocabs(compile_program(program, diags), vocabs, checkpoint)
        settings = settings_from_block(compiled.flat.train, compiled.diags)
        session = Session(compiled, settings, None, Model(compiled, dtype=np.dtype(settings.dtype)))
    if ck.spec_hash and ck.spec_hash != spec_hash(session.compiled):
        raise CheckpointError(f"{checkpoint}: checkpoint was made from a different spec (hash {ck.spec_hash}, "
                              f"this spec {spec_hash(session.compiled)})")
    check_shapes(checkpoint, ck.params, {p.name: tuple(p.shape) for p in session.plan.params})
    for p in session.plan.params:
        session.model.params[p.name] = ck.params[p.name].astype(session.model.dtype)
    return session, vocabs


def _read_lines(path: str) -> list[str]:
    """The non-blank lines of --input: a regular file or standard input, within the read limit."""
    return [line for line in _read_input(path).splitlines() if line.strip()]


def _read_input(path: str) -> str:
    """--input as text: a regular file or standard input, within the read limit."""
    from ..data import DataError
    from ..limits import READ_LIMIT_VARIABLE, ReadRefused, read_limit, read_regular_file
    limit = read_limit()
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
            if len(data) > limit:
                raise ReadRefused(f"more than the limit of {limit:,} bytes; set {READ_LIMIT_VARIABLE} to read more")
        else:
            data = read_regular_file(Path(path), limit, f"set {READ_LIMIT_VARIABLE} to read larger files")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except ReadRefused as e:
        raise DataError(str(e), path) from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"cannot read the input: {getattr(e, 'strerror', None) or e}", path) from None
    return text


def cmd_predict(args) -> int:
    from ..trained import load
    model = load(args.checkpoint, spec=args.spec)
    if model.compiled.decoder is not None:
        return _predict_sequences(args, model)
    if args.beam != 1 or args.max_length is not None or args.attention is not None or args.length_penalty is not None:
        raise UsageError("--beam, --length-penalty, --max-length and --attention are for an encoder-decoder: a spec with a decode "
                         "declaration (decode tgt from p, end \"</s>\")")
    try:
        model.text_input()
    except ValueError as e:
        raise UsageError(str(e)) from None
    tokenizer = args.tokenize
    if tokenizer == "treebank":
        from ..trained import treebank_tokenize
        try:
            treebank_tokenize("")
        except ImportError as e:
            raise UsageError(str(e)) from None
    if args.onnx:
        from ..onnx.commands import predict
        predictions = predict(args, model, _read_lines(args.input))
    else:
        predictions = [(line, model.predict(line, tokenizer=tokenizer)) for line in _read_lines(args.input)]
    if args.json:
        print(json.dumps([{"input": line, **p.to_json()} for line, p in predictions], indent=2, default=str))
        return 0
    for line, p in predictions:
        for labels in p.labels.values():
            if isinstance(labels, list):
                print(" ".join(f"{w}/{t}" for w, t in zip(p.tokens, labels)))
            else:
                print(f"{labels}\t{line}")
    return 0


def _predict_sequences(args, model) -> int:
    """predict on an encoder-decoder: one source per line in, its decoded output per line out."""
    from ..data import DataError
    from ..decode import DEFAULT_LENGTH_PENALTY, SourceError, decode_texts, source_inputs
    from ..model import FeedError
    if args.onnx:
        raise UsageError("--onnx computes one forward pass; decoding an encoder-decoder runs one per output "
                         "token, here in NumPy (leave out --onnx)")
    try:
        source_inputs(model)
    except FeedError as e:
        raise UsageError(str(e)) from None
    where = "<stdin>" if args.input == "-" else args.input
    lines = _read_input(args.input).splitlines()
    while lines and not lines[-1].strip():     # blank lines at the end of a file are no sources
        lines.pop()
    alpha = DEFAULT_LENGTH_PENALTY if args.length_penalty is None else args.length_penalty
    try:
        decoded = decode_texts(model, lines, beam=args.beam, max_length=args.max_length,
                               max_source=model.settings.max_length, length_penalty=alpha)
    except SourceError as e:
        raise DataError(str(e), where, e.index + 1) from None
    if args.attention is not None:
        _draw_attention(model, decoded, Path(args.attention))
    joiner = "" if model.vocabs[model.compiled.decoder.input].level == "char" else " "
    if args.json:
        print(json.dumps([{"input": line, "sources": d.sources, "output": joiner.join(map(str, d.outputs[0][0])),
                           "tokens": [str(t) for t in d.outputs[0][0]], "score": d.outputs[0][1],
                           "ended": d.outputs[0][2],
                           **({"length_penalty": alpha, "normalized_score": d.normalized[0],
                               "beam": [{"output": joiner.join(map(str, t)), "score": s, "normalized_score": n,
                                         "ended": e} for (t, s, e), n in zip(d.outputs, d.normalized)]}
                              if args.beam > 1 else {})}
                          for line, d in zip(lines, decoded)], indent=2, default=str))
        return 0
    for d in decoded:
        print(joiner.join(map(str, d.outputs[0][0])))
    return 0


def _sample_sequence(args) -> int:
    """sample on an encoder-decoder: an output drawn token by token from the decoder's predictions
    for the source --prompt (predict's decoding, drawing instead of taking the most probable)."""
    from ..data import DataError
    from ..decode import SourceError, decode_texts, source_inputs
    from ..model import FeedError
    from ..trained import load
    model = load(args.checkpoint, spec=args.spec)
    try:
        source_inputs(model)
        (d,) = decode_texts(model, [args.prompt], max_length=args.length or None, temperature=args.temperature,
                            max_source=model.settings.max_length, rng=np.random.default_rng(args.seed))
    except FeedError as e:
        raise UsageError(str(e)) from None
    except SourceError as e:
        raise DataError(str(e), "--prompt") from None
    tokens, score, ended = d.outputs[0]
    text = ("" if model.vocabs[model.compiled.decoder.input].level == "char" else " ").join(map(str, tokens))
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "score": score, "ended": ended}))
    else:
        print(text)
    return 0


def _draw_attention(model, decoded, folder: Path) -> None:
    """DIR/LINE.png per source line (DIR/LINE-NAME.png when the network attends more than once)."""
    from ..decode import attention_maps
    end = model.compiled.decoder.end
    drawn = 0
    for i, d in enumerate(decoded, 1):
        maps = attention_maps(model, d)
        tokens, _, ended = d.outputs[0]
        rows = [str(t) for t in tokens] + ([end] if ended else [])
        for name, (w, source) in maps.items():
            from ..train.plots import plot_attention     # matplotlib, only when asked for
            stem = f"{i:04d}" if len(maps) == 1 else f"{i:04d}-{name}"
            plot_attention(w, rows, [str(t) for t in d.sources[source]], folder / f"{stem}.png",
                           title=f"line {i}: attention '{name}'")
            drawn += 1
    if not drawn and decoded:
        raise UsageError("--attention: this network has no attention over its source (a softmax over the "
                         "source's steps on the output's axis, as the attention cells compute)")


def cmd_evaluate(args) -> int:
    from ..train.loop import evaluate
    if args.file is None and args.data is None:
        return _evaluate_split(args, args.split or "test")
    session, vocabs = open_trained(args.spec, args.checkpoint)
    data = _data_of_user(session, vocabs, args)
    settings = session.settings
    if data.stream:  # a short file still makes one column
        settings = settings.model_copy(update={"batch": max(1, min(settings.batch, data.size("all") - 1))})
    metrics = evaluate(session.model, data, "all", settings).metrics
    what = args.file if args.file is not None else args.data
    count = data.size("all") if data.stream else len(data.splits["all"])
    unit = "tokens" if data.stream else "examples"
    if args.json:
        key = "file" if args.file is not None else "data"
        print(json.dumps({key: what, unit: count, "metrics": metrics}, indent=2))
    else:
        print(f"{what} ({count:,} {unit}): " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def _evaluate_split(args, split: str) -> int:
    from ..train.loop import evaluate
    session, _ = open_trained(args.spec, args.checkpoint, with_data=True)
    if not session.data.has(split):
        have = [s for s in ("train", "dev", "test", "all") if session.data.has(s)]
        raise UsageError(f"the data has no '{split}' part; it has {', '.join(have)}")
    metrics = evaluate(session.model, session.data, split, session.settings).metrics
    if args.json:
        print(json.dumps({"split": split, "metrics": metrics}, indent=2))
    else:
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def _data_of_user(session, vocabs: dict, args):
    """The user's --file or --data, encoded with the checkpoint's vocabularies and input statistics."""
    from ..data import DataError, input_statistics_from_json
    from ..dataset import bind_trained, source_call
    from ..errors import Diagnostics
    from ..train.checkpoint import TrainedMeta, load_checkpoint
    diags = Diagnostics(session.compiled.diags.sources)
    if args.file is not None:
        stmt = session.compiled.flat.data
        name, call_args, kwargs = _with_file(stmt, source_call(stmt, diags) if stmt is not None else None, args.file)
    else:
        stmt = parse_data_source(args.data, diags)
        name, call_args, kwargs = source_call(stmt, diags)
    norm = load_checkpoint(checkpoint_dir(args.checkpoint), schema=TrainedMeta).norm_stats or {}
    standardizers = {k: input_statistics_from_json(v) for k, v in norm.items()}
    data = bind_trained(stmt, name, call_args, kwargs, session.plan, vocabs, standardizers, Path("."), diags,
                        decode=session.compiled.flat.decode)
    if data.stream and data.size("all") < 2:
        raise DataError("a language model needs at least two tokens (one to read, one to predict)",
                        args.file or "--data")
    return data


FILE_ARGUMENTS = ("train", "dev", "test")


def _with_file(stmt, call, path: str) -> tuple[str, list, dict]:
    """The spec's data source with its file(s) replaced by ``path``: the same reader and options."""
    if call is None or call[0] == "inline":
        raise UsageError("the spec's data is written inline, so there is no file format to follow; "
                         "say how to read the file with --data, e.g. --data 'csv(\"file.csv\")'")
    name, args, kwargs = call
    if any(isinstance(a, tuple) for a in args):  # lines("pos.txt" -> 1, ...): the file decides the label
        raise UsageError(f"the spec's {name}(...) takes each example's label from which file it is in, "
                         f"so one file does not say its labels; give files and labels with --data, e.g. "
                         f"--data '{name}(\"{path}\" -> 1)'")
    kwargs = {k: v for k, v in kwargs.items() if k not in FILE_ARGUMENTS}
    if name == "text":
        kwargs["split"] = [1.0]  # the whole file
    return name, [path], kwargs


def parse_data_source(text: str, diags) -> object:
    """``--data 'csv("x.csv")'``: one data source in the spec language (``data`` in front is optional)."""
    from ..errors import SpecError
    from ..syntax import ast
    from ..syntax.parser import parse
    source = text if re.match(r"\s*data\s", text) else f"data {text}"
    module = parse(source, "--data", diags)
    diags.raise_if_errors()
    stmts = module.statements if module is not None else []
    if len(stmts) != 1 or not isinstance(stmts[0], (ast.DataSource, ast.DataInline)):
        raise SpecError.single(f"--data takes one data source, e.g. 'csv(\"file.csv\")', got {text!r}")
    return stmts[0]


def cmd_sample(args) -> int:
    from ..train.loop import find_heads
    session, vocabs = open_trained(args.spec, args.checkpoint)
    if session.compiled.decoder is not None:
        return _sample_sequence(args)
    args.length = 300 if args.length is None else args.length
    heads = [h for h in find_heads(session.model) if h.tokens]
    if not heads:
        raise UsageError("sample needs a language model: a loss that predicts the next token of an input")
    head = heads[0]
    from ..chunks import Stream
    from ..ops import REGISTRY
    prediction = REGISTRY[next(s.op for s in session.plan.steps if s.id == head.loss)].prediction
    field = next(v for v in session.plan.inputs if v.elem in ("token", "char"))
    vocab = vocabs[field.name]
    rng = np.random.default_rng(args.seed)
    tokens = tokenize(args.prompt, level=vocab.level) or ["\n"]
    ids = vocab.encode(tokens)
    out = list(tokens)
    stream = Stream(session.plan)   # each token continues from the states the last one left
    tape = session.model.run({field.name: ids[:, None]}, need_loss=False)
    stream.advance(tape)
    for _ in range(args.length):
        logits = np.asarray(tape.values[head.pred][-1, 0], dtype=np.float64)
        if prediction == "probabilities":  # back to log space (logits and log-probabilities already are)
            logits = np.log(np.maximum(logits, 1e-30))
        z = logits / max(args.temperature, 1e-6)
        z[:2] = -np.inf  # never emit <pad> or <unk>
        p = np.exp(z - z.max())
        p /= p.sum()
        nxt = int(rng.choice(len(p), p=p))
        out.append(vocab.decode([nxt])[0])
        tape = session.model.run({field.name: np.array([[nxt]])}, carry=stream.carry_into(True), need_loss=False)
        stream.advance(tape)
    joiner = "" if vocab.level == "char" else " "
    text = joiner.join(str(t) for t in out)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text}))
    else:
        print(text)
    return 0
