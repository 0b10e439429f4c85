"""The ``decode`` declaration, checked against the network: which token input a decoder is fed back,
from which prediction, its start and end symbols and its maximum length.

    decode tgt from p, start "<s>", end "</s>", max 30

says, once, what both uses of the spec need. Training reads ``tgt`` as data framed by the symbols
(``<s> y1 .. yn </s>``, added by the data layer, never written in the data files) and the decoder
reads the gold token before each step (teacher forcing). Decoding (nnspec/decode.py) feeds
``<s>``, then its own prediction at each step, until it predicts ``</s>`` or has written ``max``
tokens. For that to be the same computation, ``p`` must be compared with ``tgt`` by a class loss
and must read ``tgt`` only at earlier steps (:func:`autoregressive`), which is checked here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import Diagnostics, did_you_mean
from .expand import FlatSpec
from .graph import Graph
from .ops import REGISTRY
from .plan import LoopStep, OpStep, Plan

OPTIONS = {"start": str, "end": str, "max": int}
RESERVED = ("<pad>", "<unk>")      # the token vocabulary's own specials (nnspec/data/vocab.py)
DEFAULT_MAX = 100


@dataclass(frozen=True)
class Decoder:
    """A checked decode declaration: ``input`` is fed back from ``prediction``; ``scores`` is the
    plan value the loss reads as that prediction (the logits once a softmax is fused into the loss)
    and ``scores_kind`` what it holds (probabilities, logits or log_probabilities)."""
    input: str
    prediction: str
    axis: str
    end: str
    max_length: int = DEFAULT_MAX
    start: str | None = None
    scores: str = ""
    scores_kind: str = "probabilities"


def autoregressive(plan: Plan) -> list[tuple[str, str]]:
    """(input, prediction) pairs of the plan's teacher-forced decoders: a sequence token input that
    a class loss compares a prediction with, where the prediction at step t reads the input only
    at steps before t (no path at the same step, no read of a later step)."""
    tokens = {v.name: v for v in plan.inputs if v.seq and v.elem in ("token", "char")}
    pairs = []
    for s in plan.steps:
        if isinstance(s, OpStep) and REGISTRY[s.op].target == "class" and len(s.inputs) == 2:
            (pred, _), (target, _) = s.inputs
            if target in tokens and _only_earlier_steps(plan, target, pred):
                pairs.append((target, pred))
    return pairs


def _only_earlier_steps(plan: Plan, source: str, value: str) -> bool:
    """Whether ``value`` at step t reads ``source`` only at steps before t."""
    same = {source}      # depends on source at the same step (or a later one)
    reads = {source}     # depends on source at all
    for step in plan.steps:
        body = step.body if isinstance(step, LoopStep) else [step]
        for _ in range(len(body) + 1 if isinstance(step, LoopStep) else 1):   # a loop: to a fixpoint
            for b in body:
                for src, d in b.inputs:
                    if src in reads:
                        reads.add(b.id)
                        if d > 0:           # a later step of something made from the source
                            return False
                    if src in same and d == 0:
                        same.add(b.id)
    return value not in same and value in reads


def check_decode(flat: FlatSpec, graph: Graph, plan: Plan, diags: Diagnostics) -> Decoder | None:
    """The spec's decode declaration checked (mistakes are located errors in ``diags``), or None."""
    stmt = flat.decode
    if stmt is None:
        return None
    errors_before = len(diags.errors)
    options: dict[str, str | int] = {}
    for o in stmt.options:
        if o.name not in OPTIONS:
            diags.error(f"unknown decode option '{o.name}'{did_you_mean(o.name, OPTIONS)}; the options are "
                        f"start \"<s>\", end \"</s>\" and max N", o.span)
        elif o.name in options:
            diags.error(f"decode option '{o.name}' is given twice", o.span)
        elif not isinstance(o.value, OPTIONS[o.name]):
            example = 'a symbol in quotes, e.g. end "</s>"' if OPTIONS[o.name] is str else "a whole number, e.g. max 30"
            diags.error(f"decode option '{o.name}' takes {example}", o.span)
        elif o.name == "max" and o.value < 1:
            diags.error("decode option 'max' (the longest output) must be at least 1", o.span)
        elif isinstance(o.value, str) and (not o.value or o.value != o.value.strip() or " " in o.value
                                           or o.value in RESERVED):
            diags.error(f"the {o.name} symbol must be one token, not empty, without spaces and not "
                        f"{' or '.join(RESERVED)}; got \"{o.value}\"", o.span)
        else:
            options[o.name] = o.value
    if "end" not in options and not any(o.name == "end" for o in stmt.options):
        diags.error(f'decode needs an end symbol, at which decoding stops: decode {stmt.input} from '
                    f'{stmt.prediction}, end "</s>"', stmt.span)
    if "start" in options and options.get("start") == options.get("end"):
        diags.error(f"the start and end symbols must differ (both \"{options['end']}\")", stmt.span)
    inputs = {v.name: v for v in plan.inputs}
    spec = inputs.get(stmt.input)
    if spec is None:
        diags.error(f"decode: '{stmt.input}' is not an input{did_you_mean(stmt.input, inputs)}; decode names "
                    f"the token input the decoder is fed back", stmt.span)
    elif not (spec.seq and spec.elem in ("token", "char")) or spec.view is not None:
        diags.error(f"decode: '{stmt.input}' must be a sequence of tokens read from the data (e.g. "
                    f"'input {stmt.input} : seq(out) of token'), to be fed back token by token", stmt.span)
    elif stmt.prediction not in graph.g:
        names = [i.id for i in graph.nodes() if i.named]
        diags.error(f"decode: '{stmt.prediction}' is not defined{did_you_mean(stmt.prediction, names)}", stmt.span)
    else:
        compared = [i for i in graph.nodes() if i.op and REGISTRY[i.op].target == "class" and len(i.inputs) == 2
                    and i.inputs[0][0] == stmt.prediction and i.inputs[1][0] == stmt.input]
        pairs = dict(autoregressive(plan))
        if not compared:
            diags.error(f"decode: no loss compares '{stmt.prediction}' with '{stmt.input}'; the decoder is "
                        f"trained by e.g. 'loss cross_entropy({stmt.prediction}, {stmt.input})'", stmt.span)
        elif stmt.input not in pairs:
            diags.error(f"decode: '{stmt.prediction}' at a step must read '{stmt.input}' only at earlier steps "
                        f"(e.g. embed({stmt.input}, 32) read as [t-1]), since at decoding a token is known only "
                        f"once it has been predicted", stmt.span)
    if len(diags.errors) > errors_before:
        return None
    scores = dict(autoregressive(plan))[stmt.input]
    loss = next(s for s in plan.steps if isinstance(s, OpStep) and s.inputs[:1] == [(scores, 0)]
                and REGISTRY[s.op].target == "class")
    return Decoder(input=stmt.input, prediction=stmt.prediction, axis=(spec.axes or ["time"])[-1],
                   end=str(options["end"]), max_length=int(options.get("max", DEFAULT_MAX)),
                   start=options.get("start"), scores=scores, scores_kind=REGISTRY[loss.op].prediction)
