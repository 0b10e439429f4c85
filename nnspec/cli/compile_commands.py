"""Commands on a compiled spec, without training: check, grad, graph, expand, ops."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..train.rundir import nan_to_null
from .arguments import count, memory_limit_flag
from .output import console, emit_json, show, squeeze


def add_check(sub) -> None:
    c = sub.add_parser("check", help="validate a spec and summarise its values and parameters")
    c.add_argument("spec")
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-data", action="store_true", help="do not read the data (sizes it decides stay symbolic)")
    memory_limit_flag(c)
    c.set_defaults(func=cmd_check)


def add_grad(sub) -> None:
    g = sub.add_parser("grad", help="value and gradients of the output or loss at given inputs")
    g.add_argument("spec")
    g.add_argument("--at", nargs="+", metavar="NAME=VALUE", required=True)
    g.add_argument("--of", help="the value to differentiate (default: the loss, else the output)")
    g.add_argument("--json", action="store_true")
    memory_limit_flag(g)
    g.set_defaults(func=cmd_grad)


def add_graph(sub) -> None:
    d = sub.add_parser("graph", help="the computation graph as DOT (SVG/PNG with -o when Graphviz is installed)")
    d.add_argument("spec")
    d.add_argument("--at", nargs="+", metavar="NAME=VALUE", help="show forward values and gradients")
    d.add_argument("--unroll", type=count(1, 100), help="draw a recurrent net unrolled over N steps (at most 100)")
    d.add_argument("-o", "--output", help="write to a .dot, .svg or .png file")
    memory_limit_flag(d)
    d.set_defaults(func=cmd_graph)


def add_expand(sub) -> None:
    e = sub.add_parser("expand", help="the spec with every cell and shorthand expanded into plain equations")
    e.add_argument("spec")
    e.add_argument("--plan", action="store_true", help="show the execution plan instead")
    e.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")
    memory_limit_flag(e)
    e.set_defaults(func=cmd_expand)


def add_ops(sub) -> None:
    o = sub.add_parser("ops", help="list the built-in operations")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_ops)


def cmd_check(args) -> int:
    from ..session import open_session
    session = open_session(args.spec, with_data=not args.no_data, memory_limit=args.memory_limit)
    c = session.compiled
    if c.flat.sweep is not None:  # its search space too: a misspelt key or a bad range, before any sweep
        from ..sweep.space import read_sweep_spec
        read_sweep_spec(args.spec, need_space=False)
    loops = [{"values": [n for n in comp.nodes if c.graph.info(n).named],
              "direction": "forward" if comp.direction > 0 else "backward"} for comp in c.components]
    warnings = [d.to_json() for d in c.diags.warnings]
    counts = {p.name: _param_size(p.shape) for p in c.plan.params}
    total = _total_size(counts.values())
    if args.json:
        from ..dataset import data_files
        program = c.program
        files = ([{"path": program.files[0], "kind": "spec"}] if program.files else []) \
            + [{"path": f, "kind": "include"} for f in program.files[1:]] \
            + [{"path": f, "kind": "data"} for f in data_files(c.flat, c.diags)]
        emit_json(nan_to_null({"ok": True, "kind": c.kind, "errors": [], "warnings": warnings,
                                "parameters": total, "loops": loops, "files": files,
                                **({"decoder": _decoder_json(c.decoder)} if c.decoder else {}),
                                "values": {n.id: {"shape": [str(d) for d in n.shape or ()], "sequence": n.seq,
                                                  "axes": list(n.axes)}
                                           for n in c.graph.nodes() if n.named}}))
        return 0
    from rich.table import Table
    con = console()
    if c.diags.warnings:
        print(c.diags.render(), file=sys.stderr)
    table = Table(title=f"{c.name}: {c.kind}", title_justify="left")
    named_axes = any(n.axes not in ((), ("time",)) for n in c.graph.nodes())
    for col in ("value", "kind", "shape", "axes" if named_axes else "time", "parameters"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for info in c.graph.nodes():
        if not info.named:
            continue
        kind = info.kind if info.kind != "op" else info.op
        if info.kind == "param" and info.frozen:
            kind += " (frozen)"
        shape = "[" + ", ".join(str(d) for d in info.shape or ()) + "]"
        count = counts.get(info.id, "")
        count = f"{count:,}" if isinstance(count, int) else count
        time = "sequence" if info.seq else ""
        if info.component is not None:
            time = "recurrent" + (" (backward)" if c.components[info.component].direction < 0 else "")
        if named_axes and info.axes:   # each value's axes, outermost first: (time, char) for a word's characters
            time = "(" + ", ".join(info.axes) + ")" + (" " + time if info.component is not None else "")
        table.add_row(info.id, kind, shape, time, count)
    con.print(table)
    con.print(f"parameters: {total:,}" if isinstance(total, int) else f"parameters: {total}")
    for i, loop in enumerate(loops):
        over = (f"over {c.graph.info(c.components[i].nodes[0]).axes[-1]}" if named_axes else "in time")
        con.print(f"loop {i + 1} ({loop['direction']} {over}): {', '.join(loop['values'])}")
    d = c.decoder
    if d is not None:
        start = f"{d.start} first, " if d.start is not None else ""
        con.print(f"decoder: {d.input} fed back from {d.prediction} over {d.axis}, {start}until {d.end} or "
                  f"{d.max_length} tokens", markup=False)
    con.print("ok")
    return 0


def _decoder_json(d) -> dict:
    return {"input": d.input, "prediction": d.prediction, "axis": d.axis, "start": d.start, "end": d.end,
            "max": d.max_length}


def _param_size(shape) -> int | str:
    """A parameter's number of values; symbolic (``vocab(w)×100``) while the data has not decided a size."""
    if all(isinstance(d, int) for d in shape):
        return int(np.prod(shape)) if shape else 1
    return "×".join(str(d) for d in shape)


def _total_size(sizes) -> int | str:
    known = sum(s for s in sizes if isinstance(s, int))
    symbolic = [s for s in sizes if isinstance(s, str)]
    return known if not symbolic else " + ".join(symbolic + [f"{known:,}"])


def cmd_grad(args) -> int:
    from ..session import open_session
    session = open_session(args.spec, with_data=False, dtype="float64", memory_limit=args.memory_limit)
    if session.model is None:   # sizes the data decides (a vocabulary): read it for them
        session = open_session(args.spec, with_data=True, dtype="float64", memory_limit=args.memory_limit)
    if session.model is None:
        raise UsageError("grad: the network's sizes are not all known (some come from data the spec does not "
                         "read); give them in the spec")
    feeds = _feeds_at(session, _parse_at(args.at or []))
    if args.of is not None and args.of not in set(session.plan.value_ids()) | {v.name for v in session.plan.inputs}:
        from ..errors import did_you_mean
        named = [n for n in session.plan.value_ids() if "#" not in n]
        raise UsageError(f"--of {args.of}: no value of that name{did_you_mean(args.of, named)}")
    value, grads = session.model.gradients(feeds, of=args.of)
    seq = _sequences(session)
    name = args.of or session.plan.loss or session.plan.outputs[0]
    value = _one_example(value, name in seq)
    result = {"value": _to_py(value), "gradients": {k: _to_py(_one_example(g, k in seq) if k in feeds else g)
                                                    for k, g in grads.items()}}
    if args.json:
        emit_json(nan_to_null(result))
        return 0
    con = console()
    con.print(f"{name} = {show(result['value'])}")
    for k, g in result["gradients"].items():
        con.print(f"∂{name}/∂{k} = {show(g)}")
    return 0


def _to_py(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


def cmd_graph(args) -> int:
    from ..render import dot_of, picture, write_graph
    from ..session import open_session
    session = open_session(args.spec, with_data=not args.at, dtype="float64" if args.at else None,
                           memory_limit=args.memory_limit)
    values = grads = None
    if args.at:
        feeds = _feeds_at(session, _parse_at(args.at))
        tape = session.model.run(feeds)
        target = session.plan.loss or session.plan.outputs[0]
        g = session.model.executor.backward(tape, seeds={target: np.ones_like(tape.values[target])})
        seq, static = _sequences(session), set(session.model.params) | set(session.plan.consts)
        values = {k: v if k in static else _one_example(v, k in seq) for k, v in tape.values.items()}
        grads = {k: v if k in static else _one_example(v, k in seq) for k, v in g.items()}
    pic = picture(session.compiled.graph, values, grads, unroll=args.unroll or 0)
    dot = dot_of(pic)
    if args.output:
        from ..display import svg
        print(write_graph(dot, Path(args.output), drawn_svg=lambda: svg(pic)), file=sys.stderr)
    else:
        print(dot)
    return 0


def cmd_expand(args) -> int:
    from ..expand import format_flat
    from ..session import open_session
    session = open_session(args.spec, with_data=False, memory_limit=args.memory_limit)
    if args.plan:
        if args.json:
            print(session.plan.model_dump_json(indent=2))
        else:
            print(session.plan.text())
        return 0
    print(format_flat(session.compiled.flat), end="")
    return 0


def cmd_ops(args) -> int:
    from ..ops import REGISTRY
    if args.json:
        emit_json({k: {"doc": op.doc, "arity": op.arity, "attrs": op.attrs} for k, op in sorted(REGISTRY.items())})
        return 0
    for name, op in sorted(REGISTRY.items()):
        attrs = ", ".join(f"{k}={v}" for k, v in op.attrs.items())
        print(f"{name:22s} {op.doc}" + (f"  [{attrs}]" if attrs else ""))
    return 0


# ---- --at: one example's inputs, written on the command line ----------------------

def _parse_at(pairs: list[str]) -> dict[str, float]:
    values = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"--at takes name=value pairs, got {p!r}")
        k, v = p.split("=", 1)
        try:
            values[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            raise UsageError(f"--at {k}: {v!r} is not a number or a [list]") from None
    return values


def _feeds_at(session, at: dict) -> dict:
    known = {v.name: v for v in session.plan.inputs + session.plan.targets}
    unknown = set(at) - set(known)
    if unknown:
        from ..errors import did_you_mean
        name = sorted(unknown)[0]
        raise UsageError(f"--at {name}: no input or target of that name{did_you_mean(name, known)}")
    missing = [n for n in known if n not in at]
    if missing:
        raise UsageError(f"--at needs a value for {', '.join(missing)}")
    feeds, steps = {}, {}
    for name, v in at.items():
        spec = known[name]
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (ValueError, TypeError):
            raise UsageError(f"--at {name}: {json.dumps(v)} is not a number or a rectangular list of numbers") \
                from None
        want = ["?" if not isinstance(d, int) else d for d in spec.shape]
        got = list(arr.shape[1:] if spec.seq else arr.shape)
        if (spec.seq and arr.ndim == 0) or len(got) != len(want) or any(
                w != "?" and w != g for w, g in zip(want, got)):
            each = "a number" if not want else f"a list of {want[0]} numbers" if len(want) == 1 else f"shape {want}"
            how = (f"a sequence: a list of its steps, each {each}" if spec.seq else each)
            raise UsageError(f"--at {name}: expected {how}; got {json.dumps(v)}")
        if spec.seq:
            if len(arr) == 0:
                raise UsageError(f"--at {name}: a sequence needs at least one step")
            steps.setdefault((spec.axes or ["time"])[-1], {})[name] = len(arr)   # [axes] per axis
            feeds[name] = arr[:, None, ...]   # time-major, a batch of one
        else:
            feeds[name] = arr[None, ...]      # a batch of one
    for axis, on_axis in steps.items():
        if len(set(on_axis.values())) > 1:
            listed = ", ".join(f"{n} has {k}" for n, k in on_axis.items())
            where = f" on one axis ({axis})" if len(steps) > 1 or axis != "time" else ""
            raise UsageError(f"--at: the sequences of one example{where} have the same number of steps; {listed}")
    return feeds


def _one_example(a, seq: bool):
    """A batch-of-one array as the example's value: its steps for a sequence (without the batch axis)."""
    a = squeeze(a)
    if np.ndim(a) == 0:          # a loss: one number
        return a
    return a[:, 0] if seq else a[0]


def _sequences(session) -> set[str]:
    from ..plan import LoopStep
    seq = {v.name for v in session.plan.inputs + session.plan.targets if v.seq}
    for s in session.plan.steps:
        seq |= {b.id for b in (s.body if isinstance(s, LoopStep) else [s]) if b.seq}
    return seq
