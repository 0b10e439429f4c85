"""The ``nnspec`` command line. Errors of the user's making are rendered here, once, without a traceback."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .data import DataError
from .errors import Diagnostics, SpecError
from .runtime import RuntimeFailure
from .sweep import SweepError
from .train.checkpoint import CheckpointError
from .train.loop import TrainingError


class UsageError(Exception):
    pass


# ---- output helpers -----------------------------------------------------------

def _console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=True)


def _emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_jsonable, allow_nan=False))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _clean(x):
    """JSON has no NaN: report them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _fmt_num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _squeeze(a: np.ndarray):
    a = np.asarray(a)
    if a.ndim >= 2 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


# ---- commands ---------------------------------------------------------------------

def cmd_check(args) -> int:
    from .session import open_session
    session = open_session(args.spec, with_data=not args.no_data)
    c = session.compiled
    loops = [{"values": [n for n in comp.nodes if c.graph.info(n).named],
              "direction": "forward" if comp.direction > 0 else "backward"} for comp in c.components]
    warnings = [d.to_json() for d in c.diags.warnings]
    counts = {p.name: _param_size(p.shape) for p in c.plan.params}
    total = _total_size(counts.values())
    if args.json:
        _emit_json(_clean({"ok": True, "kind": c.kind, "errors": [], "warnings": warnings,
                           "parameters": total, "loops": loops,
                           "values": {n.id: {"shape": [str(d) for d in n.shape or ()], "sequence": n.seq}
                                      for n in c.graph.nodes() if n.named}}))
        return 0
    from rich.table import Table
    con = _console()
    if c.diags.warnings:
        print(c.diags.render(), file=sys.stderr)
    table = Table(title=f"{c.name}: {c.kind}", title_justify="left")
    for col in ("value", "kind", "shape", "time", "parameters"):
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
        table.add_row(info.id, kind, shape, time, count)
    con.print(table)
    con.print(f"parameters: {total:,}" if isinstance(total, int) else f"parameters: {total}")
    for i, loop in enumerate(loops):
        con.print(f"loop {i + 1} ({loop['direction']} in time): {', '.join(loop['values'])}")
    con.print("ok")
    return 0


def _param_size(shape) -> int | str:
    """A parameter's number of values; symbolic (``vocab(w)×100``) while the data has not decided a size."""
    if all(isinstance(d, int) for d in shape):
        return int(np.prod(shape)) if shape else 1
    return "×".join(str(d) for d in shape)


def _total_size(sizes) -> int | str:
    known = sum(s for s in sizes if isinstance(s, int))
    symbolic = [s for s in sizes if isinstance(s, str)]
    return known if not symbolic else " + ".join(symbolic + [f"{known:,}"])


def cmd_run(args) -> int:
    from .session import open_session
    if args.folds:
        return _cross_validate(args)
    if args.inner_folds or args.scheduler or args.workers:
        raise UsageError("--inner-folds, --scheduler and --workers go with --folds (sweeps: nnspec sweep)")
    session = open_session(args.spec, overrides=args.set or [], seed=args.seed,
                           dtype="float64" if args.float64 else None)
    if session.compiled.flat.train is None and not args.set:
        return _run_forward(session, args)
    report = _train(session, args)
    if args.json:
        _emit_json(_clean(report))
    return 0


def _train(session, args, fold: str = "") -> dict:
    from .train.loop import Trainer
    from .train.rundir import RunDir
    if session.data is None:
        raise UsageError("training needs data: add a data statement to the spec")
    run_dir = None
    if not args.no_save:
        run_dir = RunDir(spec_name=session.compiled.name + fold, root=args.runs,
                         path=Path(args.resume) if args.resume else None)
        run_dir.write_spec(_spec_text(session))
        run_dir.write_settings(session.settings.model_dump())
    trainer = Trainer(session.model, session.data, session.settings, run_dir=run_dir, spec_hash=session.spec_hash,
                      quiet=args.quiet or args.json)
    if args.resume:
        trainer.resume(Path(args.resume) / "last")
    result = trainer.fit()
    if run_dir is not None:
        _plots(session, run_dir, result)
    metrics = {"best_epoch": result.best_epoch, "epochs": result.epochs_run, "seconds": round(result.seconds, 2)}
    metrics.update({k: v for k, v in result.best.items() if k.startswith(("dev_", "train_"))})
    if result.test is not None:
        metrics.update({f"test_{k}": v for k, v in result.test.items()})
    if result.converged is not None:
        metrics["converged"] = result.converged
    report = {"kind": session.compiled.kind, "metrics": metrics, "outputs": {},
              "run_dir": result.run_dir}
    if not args.json:
        _print_training(session, result, metrics)
    return report


def _spec_text(session) -> str:
    from .expand import format_flat
    main = Path(session.compiled.program.main_file)
    original = main.read_text(encoding="utf-8") if main.exists() else ""
    return original + "\n# ---- expanded ----\n# " + format_flat(session.compiled.flat).replace("\n", "\n# ")


def _plots(session, run_dir, result) -> None:
    from .train.loop import evaluate
    from .train.plots import plot_confusion, plot_curves
    from .train.metrics import confusion_matrix
    plot_curves(result.history, run_dir.plots / "curves.png", title=f"{session.compiled.name}")
    split = "test" if session.data.has("test") else ("dev" if session.data.has("dev") else None)
    if split is None or session.data.stream:
        return
    ev = evaluate(session.model, session.data, split, session.settings, keep_predictions=True)
    for loss_id, (guess, gold) in ev.predictions.items():
        target = next((h.target for h in _heads(session) if h.loss == loss_id), None)
        vocab = session.data.vocabs.get(target) if target else None
        if vocab is None or len(vocab) > 40:
            continue
        labels = [str(x) for x in vocab.decode(range(len(vocab)))]
        cm = confusion_matrix(guess, gold, len(vocab))
        plot_confusion(cm, labels, run_dir.plots / f"confusion-{split}.png",
                       title=f"{session.compiled.name}: {split} confusion")


def _heads(session):
    from .train.loop import find_heads
    return find_heads(session.model)


def _print_training(session, result, metrics) -> None:
    con = _console()
    if result.converged is not None:
        epochs = result.epochs_run
        if result.converged:
            con.print(f"converged: no mistakes on the training data after {epochs} epoch{'s' * (epochs != 1)}")
        else:
            mistakes = result.history[-1].get("train_mistakes", "?") if result.history else "?"
            con.print(f"[bold red]did not converge[/] after {epochs} epochs ({mistakes} mistakes in the last): "
                      f"the perceptron rule converges whenever the data is linearly separable, so these "
                      f"examples most likely are not — no single step unit classifies them all")
    best = {k: v for k, v in metrics.items() if k.startswith("dev_")}
    if best:
        con.print(f"best epoch {result.best_epoch}: " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in best.items()))
    test = {k: v for k, v in metrics.items() if k.startswith("test_")}
    if test:
        con.print("held-out test: " + "  ".join(f"{k[5:]} {_fmt_num(v)}" for k, v in test.items()))
    if not best and not test:
        last = result.history[-1] if result.history else {}
        con.print("final: " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in last.items() if k != "epoch"))
    if session.compiled.flat.data is not None and not session.data.stream and session.data.size("train") <= 16:
        _print_outputs(session, "train")
    con.print(f"trained {result.epochs_run} epoch{'s' * (result.epochs_run != 1)} in {result.seconds:.1f}s" +
              (f"; run directory {result.run_dir}" if result.run_dir else ""))


def _run_forward(session, args) -> int:
    if session.data is None:
        raise UsageError("nothing to run: the spec has no data (add 'data inline { ... }') and no train block")
    split = "all" if session.data.has("all") else "train"
    outputs = _outputs_for(session, split)
    if args.json:
        _emit_json(_clean({"kind": session.compiled.kind, "metrics": {}, "outputs": outputs}))
    else:
        _print_outputs(session, split)
    return 0


def _outputs_for(session, split: str) -> dict:
    data = session.data
    collected: dict[str, list] = {o: [] for o in session.plan.outputs}
    for batch in data.batches(split, 256, dtype=session.model.dtype):
        out = session.model.forward(batch.arrays, batch.lengths)
        for k, v in out.items():
            v = _squeeze(v)
            if v.ndim >= 2 and batch.mask is not None and v.shape[:2] == batch.mask.shape:
                collected[k] += [v[:n, b].tolist() for b, n in enumerate(batch.lengths)]
            else:
                collected[k] += v.tolist()
    return collected


def _print_outputs(session, split: str) -> None:
    con = _console()
    outputs = _outputs_for(session, split)
    enc = session.data.splits[split]
    inputs = [f.name for f in session.data.fields if f.role == "input"]
    from rich.table import Table
    table = Table()
    for name in inputs + list(outputs):
        table.add_column(name)
    for i in range(len(enc)):
        row = [_show(enc.data[n][i]) for n in inputs] + [_show(outputs[o][i]) for o in outputs]
        table.add_row(*row)
    con.print(table)


def _show(v) -> str:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, list):
        if len(v) > 8:
            return "[" + ", ".join(_show(x) for x in v[:8]) + ", …]"
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cross_validate(args) -> int:
    from .sweep.commands import run_folds
    if args.inner_folds is not None and args.inner_folds < 2:
        raise UsageError("--inner-folds takes a number from 2")
    summary = run_folds(args)
    if args.json:
        _emit_json(_clean({"kind": "cross-validation", "metrics": summary, "outputs": {}}))
        return 0
    k = summary["folds"]
    nested = f" (settings chosen in each by {args.inner_folds}-fold cross-validation)" if args.inner_folds else ""
    for name, fig in summary["test"].items():
        if fig["mean"] is None:
            continue
        spread = (f" ± {fig['stderr']:.4f} (standard error; sd {fig['sd']:.4f}, n = {fig['n']})"
                  if fig["sd"] is not None else "")
        print(f"{k}-fold cross-validation{nested}: test {name} {fig['mean']:.4f}{spread}")
        print("  per fold: " + "  ".join("-" if v is None else f"{v:.4f}" for v in fig["per_fold"]))
    if summary.get("run_dir"):
        print(f"run directory {summary['run_dir']}")
    return 0


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
        from .errors import did_you_mean
        name = sorted(unknown)[0]
        raise UsageError(f"--at {name}: no input or target of that name{did_you_mean(name, known)}")
    missing = [n for n in known if n not in at]
    if missing:
        raise UsageError(f"--at needs a value for {', '.join(missing)}")
    feeds = {}
    for name, v in at.items():
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (ValueError, TypeError):
            raise UsageError(f"--at {name}: {json.dumps(v)} is not a number or a rectangular list of numbers") \
                from None
        feeds[name] = arr[None, ...]  # a batch of one
    return feeds


def cmd_grad(args) -> int:
    from .session import open_session
    session = open_session(args.spec, with_data=False, dtype="float64")
    feeds = _feeds_at(session, _parse_at(args.at or []))
    if args.of is not None and args.of not in set(session.plan.value_ids()) | {v.name for v in session.plan.inputs}:
        from .errors import did_you_mean
        named = [n for n in session.plan.value_ids() if "#" not in n]
        raise UsageError(f"--of {args.of}: no value of that name{did_you_mean(args.of, named)}")
    value, grads = session.model.gradients(feeds, of=args.of)
    value = _squeeze(value)[0] if np.ndim(value) else value
    result = {"value": _to_py(value), "gradients": {k: _to_py(_squeeze(g)[0] if k in feeds else g)
                                                    for k, g in grads.items()}}
    if args.json:
        _emit_json(_clean(result))
        return 0
    name = args.of or session.plan.loss or session.plan.outputs[0]
    con = _console()
    con.print(f"{name} = {_show(result['value'])}")
    for k, g in result["gradients"].items():
        con.print(f"∂{name}/∂{k} = {_show(g)}")
    return 0


def _to_py(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


def cmd_graph(args) -> int:
    from .render import to_dot, write_graph
    from .session import open_session
    session = open_session(args.spec, with_data=not args.at, dtype="float64" if args.at else None)
    values = grads = None
    if args.at:
        feeds = _feeds_at(session, _parse_at(args.at))
        tape = session.model.run(feeds)
        target = session.plan.loss or session.plan.outputs[0]
        g = session.model.executor.backward(tape, seeds={target: np.ones_like(tape.values[target])})
        values = {k: _squeeze(v)[0] if k in tape.values and np.ndim(v) and k not in session.model.params
                  else v for k, v in tape.values.items()}
        grads = {k: _squeeze(v)[0] if np.ndim(v) and k not in session.model.params else v for k, v in g.items()}
    dot = to_dot(session.compiled.graph, values, grads, unroll=args.unroll or 0)
    if args.output:
        print(write_graph(dot, Path(args.output)), file=sys.stderr)
    else:
        print(dot)
    return 0


def cmd_expand(args) -> int:
    from .expand import format_flat
    from .session import open_session
    session = open_session(args.spec, with_data=False)
    if args.plan:
        if args.json:
            print(session.plan.model_dump_json(indent=2))
        else:
            print(format_plan(session.plan))
        return 0
    print(format_flat(session.compiled.flat), end="")
    return 0


def format_plan(plan) -> str:
    """The execution plan as text: one line per step, in the order the runtime runs them.

    Products, sums and slices are written as in the spec (``W @ x``, ``a + b``,
    ``x[0:128]``), so fused steps are easy to spot: ``concat_rows`` joins the
    weights of gates once per pass, one product serves them all, and each gate is
    a slice of it. The right margin says what a step runs over: ``once`` (per
    pass, parameters only), ``B`` (every example), ``T x B`` (every step of every
    sequence at once) or, inside a loop, ``per t``.
    """
    from .plan import LoopStep

    params = {p.name for p in plan.params} | set(plan.consts)
    static = set(params)
    seq = {v.name for v in plan.inputs + plan.targets if v.seq}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            if b.seq or any(src in seq for src, _ in b.inputs):
                seq.add(b.id)
        if not isinstance(s, LoopStep) and s.inputs and all(src in static for src, _ in s.inputs):
            static.add(s.id)

    def ref(operand):
        src, d = operand
        return src + (f"[t{d:+d}]" if d else "")

    def shape(dims):
        return "[" + ", ".join(str(d) for d in dims) + "]" if len(dims) else ""

    def rhs(s):
        args = [ref(x) for x in s.inputs]
        infix = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
        if s.op in infix and len(args) == 2:
            return f"{args[0]} {infix[s.op]} {args[1]}"
        if s.op == "linear":
            return f"{args[0]} @ {args[1]} + {args[2]}"
        if s.op == "slice":
            stop = s.attrs.get("stop")
            return f"{args[0]}[{s.attrs.get('start', 0)}:{'' if stop is None else stop}]"
        attrs = [f"{k} = {v}" for k, v in s.attrs.items()]
        return f"{s.op}({', '.join(args + attrs)})"

    rows: list[tuple[str, str, str, str]] = []   # indent, lhs, rhs, margin

    def add_step(s, indent, in_loop):
        margin = "per t" if in_loop else ("once" if s.id in static else ("T x B" if s.id in seq else "B"))
        rows.append((indent, f"{s.id}{shape(s.shape)}", rhs(s), margin))

    header = [f"plan {plan.name} ({'recurrent' if plan.recurrent else 'feed-forward'})"]
    if plan.passes:
        header.append(f"  optimised: {', '.join(plan.passes)}")
    for v in plan.inputs + plan.targets:
        header.append(f"  {v.role} {v.name}{shape(v.shape)}" + (" : seq" if v.seq else ""))
    for p in plan.params:
        header.append(f"  param {p.name}{shape(p.shape)} init {p.init}" + (" frozen" if p.frozen else ""))
    lines: list = []
    for s in plan.steps:
        if isinstance(s, LoopStep):
            n_mm = sum(b.op in ("matmul", "linear") for b in s.body)
            views = sum(b.op == "slice" for b in s.body)
            rows.append(("  ", f"loop over t ({'forward' if s.direction > 0 else 'backward'} in time), "
                               f"states {', '.join(s.states)}: {len(s.body) - views} ops per step "
                               f"({n_mm} product{'s' if n_mm != 1 else ''}) and {views} slices", None, None))
            for b in s.body:
                add_step(b, "    ", True)
        else:
            add_step(s, "  ", False)
    width = max((len(i) + len(lhs) for i, lhs, r, _ in rows if r is not None), default=0)
    rwidth = max((len(r) for _, _, r, _ in rows if r is not None and len(r) <= 70), default=0)
    for indent, lhs, r, margin in rows:
        if r is None:
            lines.append(indent + lhs)
        else:
            lines.append(f"{(indent + lhs).ljust(width)} = {r.ljust(rwidth)}  {margin}")
    return "\n".join(header + lines)


def cmd_ops(args) -> int:
    from .ops import REGISTRY
    if args.json:
        _emit_json({k: {"doc": op.doc, "arity": op.arity, "attrs": op.attrs} for k, op in sorted(REGISTRY.items())})
        return 0
    for name, op in sorted(REGISTRY.items()):
        attrs = ", ".join(f"{k}={v}" for k, v in op.attrs.items())
        print(f"{name:22s} {op.doc}" + (f"  [{attrs}]" if attrs else ""))
    return 0


# ---- entry point -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnspec", description="Compile, check and run neural-network specs.")
    p.add_argument("--version", action="version", version=f"nnspec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a spec and summarise its values and parameters")
    c.add_argument("spec")
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-data", action="store_true", help="do not read the data (sizes it decides stay symbolic)")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="train the spec if it has a train block, else run it forward on its data")
    r.add_argument("spec")
    r.add_argument("--set", action="append", metavar="SETTING",
                   help='override a training setting, e.g. --set epochs=5 --set "optimizer sgd(lr = 0.1)"')
    r.add_argument("--seed", type=int)
    r.add_argument("--folds", type=int, help="k-fold cross-validation: report mean test accuracy")
    r.add_argument("--inner-folds", type=int, metavar="J",
                   help="nested cross-validation: the spec's sweep chooses settings by J-fold cross-validation "
                        "inside each outer training part")
    r.add_argument("--trials", type=int, help="with --inner-folds: trials of each inner sweep")
    from .sweep.commands import add_cluster_options, add_sweep_command
    add_cluster_options(r)
    r.add_argument("--float64", action="store_true", help="compute in float64")
    r.add_argument("--runs", default="runs", help="where run directories go (default: runs/)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--no-save", action="store_true", help="write no run directory")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("grad", help="value and gradients of the output or loss at given inputs")
    g.add_argument("spec")
    g.add_argument("--at", nargs="+", metavar="NAME=VALUE", required=True)
    g.add_argument("--of", help="the value to differentiate (default: the loss, else the output)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_grad)

    d = sub.add_parser("graph", help="the computation graph as DOT (SVG/PNG with -o when Graphviz is installed)")
    d.add_argument("spec")
    d.add_argument("--at", nargs="+", metavar="NAME=VALUE", help="show forward values and gradients")
    d.add_argument("--unroll", type=int, help="draw a recurrent net unrolled over N steps")
    d.add_argument("-o", "--output", help="write to a .dot, .svg or .png file")
    d.set_defaults(func=cmd_graph)

    e = sub.add_parser("expand", help="the spec with every cell and shorthand expanded into plain equations")
    e.add_argument("spec")
    e.add_argument("--plan", action="store_true", help="show the execution plan instead")
    e.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")
    e.set_defaults(func=cmd_expand)

    o = sub.add_parser("ops", help="list the built-in operations")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_ops)

    from .cli_model import add_model_commands
    add_model_commands(sub)
    add_sweep_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        return args.func(args)
    except SpecError as e:
        return _fail(as_json, e.diagnostics.render(color=sys.stderr.isatty()), e.diagnostics)
    except (DataError, TrainingError, CheckpointError, RuntimeFailure, UsageError, SweepError) as e:
        return _fail(as_json, f"error: {e}" if not isinstance(e, DataError) else str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _fail(as_json: bool, message: str, diags: Diagnostics | None = None) -> int:
    if as_json:
        errors = [_flat_error(d) for d in diags.errors] if diags else [{"message": message}]
        _emit_json({"ok": False, "errors": errors})
    else:
        print(message, file=sys.stderr)
    return 1


def _flat_error(d) -> dict:
    out = {"message": d.message}
    if d.span is not None:
        out.update(file=d.span.file, line=d.span.line, column=d.span.column)
    return out


if __name__ == "__main__":
    sys.exit(main())
