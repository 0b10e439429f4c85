"""The command line of ONNX export: ``nnspec export`` and ``nnspec predict --onnx``.

``add_parser(subparsers)`` registers ``export``; ``predict`` (nnspec.cli.model_commands) hands a run with
``--onnx MODEL`` to :func:`predict`. Neither imports onnx until it runs.
"""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="the network as an ONNX model (needs the onnx extra)",
                       description="Write the network as an ONNX model: library cells as ONNX's RNN, LSTM and "
                                   "GRU, every other loop as a Scan. Inputs and outputs keep the spec's names; "
                                   "sequences are time-major (T, B, ...) with lengths (B,), one T and one "
                                   "lengths_<axis> per axis on several axes; see docs/onnx.md.")
    p.add_argument("spec")
    p.add_argument("--checkpoint", help="a run directory (or its best/ or last/): its trained weights and "
                                        "vocabularies (default: the spec's parameters as initialised with its seed)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--scan", action="store_true", help="write every loop as a Scan, library cells too")
    p.add_argument("--json", action="store_true", help="the file, opset and each loop's ONNX op as JSON")
    p.set_defaults(func=run)


def _require_extra() -> None:
    from ..errors import UsageError
    from . import onnx_missing
    missing = onnx_missing()
    if missing:
        raise UsageError(missing)


def run(args) -> int:
    _require_extra()
    from . import export_onnx
    from .build import OPSET
    exported = export_onnx(args.spec, args.output, checkpoint=args.checkpoint, fused=not args.scan)
    if args.json:
        print(json.dumps({"ok": True, "file": args.output, "opset": OPSET,
                          "inputs": [i.name for i in exported.model.graph.input],
                          "outputs": [o.name for o in exported.model.graph.output],
                          "loops": [{"index": l.index, "states": l.states, "direction": l.direction,
                                     "op": l.onnx_op, "detail": l.detail}
                                    | ({"with": {"index": l.partner.index, "states": l.partner.states,
                                                 "direction": l.partner.direction}} if l.partner is not None else {})
                                    for l in exported.loops]}, indent=2))
        return 0
    ins = ", ".join(i.name for i in exported.model.graph.input)
    outs = ", ".join(o.name for o in exported.model.graph.output)
    print(f"wrote {args.output} (ONNX opset {OPSET}): inputs {ins}; outputs {outs}")
    for loop in exported.loops:
        print("  " + loop.line())
    return 0


def predict(args, model, lines: list[str]) -> list:
    """``(line, Prediction)`` for each line, the numbers computed by onnxruntime from the exported model
    ``args.onnx``, the tokens and labels by the run's vocabularies (as ``predict`` without --onnx)."""
    _require_extra()
    from ..errors import UsageError
    from .runner import OnnxModel
    try:
        runner = OnnxModel(args.onnx)
    except Exception as e:  # not a file onnx can read, or a model onnxruntime refuses
        raise UsageError(f"{args.onnx}: not an ONNX model onnxruntime can run ({str(e).splitlines()[0][:200]})") \
            from None
    readers = _prediction_readers(model, runner)
    out = []
    for line in lines:
        tokens, feeds = model.encode(line, tokenizer=args.tokenize)
        values = runner.forward(feeds)
        out.append((line, model.decode(tokens, {pred: read(values) for pred, read in readers.items()})))
    return out


def _prediction_readers(model, runner) -> dict:
    """For each loss's prediction, how to get it (or an equivalent: the same labels and probabilities)
    from the exported model's outputs: ``p`` of ``softmax(z)`` gives log p for the logits z."""
    from ..errors import UsageError
    from ..ops import REGISTRY
    from ..ops.registry import scores_from
    from ..plan import OpStep
    from ..train.loop import find_heads
    producers = {s.id: s for s in model.plan.steps if isinstance(s, OpStep)}
    readers = {}
    for head in find_heads(model):
        pred = head.pred
        for name in runner.outputs:
            step = producers.get(name)
            if name == pred:
                readers[pred] = lambda v, name=name: v[name]
            elif step is not None and step.inputs and step.inputs[0][0] == pred:
                kind = REGISTRY[step.op].scores_as   # probabilities: logits up to a constant, the same softmax
                if kind is not None and kind != "scores":
                    readers[pred] = lambda v, name=name, kind=kind: scores_from(kind, v[name])
            if pred in readers:
                break
        if pred not in readers:
            raise UsageError(f"the exported model has no output that gives the prediction of the loss on "
                             f"'{head.target}' (declare it as an output, e.g. 'output p' for p = softmax(...))")
    return readers


