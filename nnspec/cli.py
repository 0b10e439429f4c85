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
from .errors import Diagnostics, SpecError, UsageError
from .model import FeedError
from .runtime import RuntimeFailure
from .sweep import SweepError
from .train.checkpoint import CheckpointError
from .train.loop import CHECKPOINT_SECONDS, TrainingError, TrainingInterrupted
from .train.rundir import nan_to_null


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
    session = open_session(args.spec, with_data=not args.no_data, memory_limit=args.memory_limit)
    c = session.compiled
    if c.flat.sweep is not None:  # its search space too: a misspelt key or a bad range, before any sweep
        from .sweep.space import read_sweep_spec
        read_sweep_spec(args.spec, need_space=False)
    loops = [{"values": [n for n in comp.nodes if c.graph.info(n).named],
              "direction": "forward" if comp.direction > 0 else "backward"} for comp in c.components]
    warnings = [d.to_json() for d in c.diags.warnings]
    counts = {p.name: _param_size(p.shape) for p in c.plan.params}
    total = _total_size(counts.values())
    if args.json:
        from .dataset import data_files
        program = c.program
        files = ([{"path": program.files[0], "kind": "spec"}] if program.files else []) \
            + [{"path": f, "kind": "include"} for f in program.files[1:]] \
            + [{"path": f, "kind": "data"} for f in data_files(c.flat, c.diags)]
        _emit_json(nan_to_null({"ok": True, "kind": c.kind, "errors": [], "warnings": warnings,
                                "parameters": total, "loops": loops, "files": files,
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
                           dtype="float64" if args.float64 else None, memory_limit=args.memory_limit)
    if session.compiled.flat.train is None and not args.set:
        return _run_forward(session, args)
    report = _train(session, args)
    if args.json:
        _emit_json(nan_to_null(report))
    return 0


def _train(session, args, run_path: Path | None = None) -> dict:
    """Train one session as ``nnspec run`` does; ``run_path``: the run directory to use (a fold's)."""
    from .train.loop import Trainer
    from .train.rundir import RunDir
    if session.data is None:
        raise UsageError("training needs data: add a data statement to the spec")
    if session.plan.loss is None:
        raise UsageError("training needs a loss to minimise: add one to the spec, e.g. 'loss cross_entropy(p, y)'")
    run_dir = None
    if not args.no_save:
        path = Path(args.resume) if args.resume else run_path
        run_dir = RunDir(spec_name=session.compiled.name, root=args.runs, path=path)
        run_dir.write_spec(_spec_text(session))
        run_dir.write_settings(session.settings.model_dump())
    trainer = Trainer(session.model, session.data, session.settings, run_dir=run_dir, spec_hash=session.spec_hash,
                      quiet=args.quiet or args.json,
                      checkpoint_seconds=getattr(args, "checkpoint_every", CHECKPOINT_SECONDS))
    if args.resume:
        trainer.resume(Path(args.resume) / "last")
    result = trainer.fit()
    metrics = {"best_epoch": result.best_epoch, "epochs": result.epochs_run, "seconds": round(result.seconds, 2)}
    metrics.update({k: v for k, v in result.best.items() if k.startswith(("dev_", "train_"))})
    if result.test is not None:
        metrics.update({f"test_{k}": v for k, v in result.test.items()})
    if result.converged is not None:
        metrics["converged"] = result.converged
    if run_dir is not None:
        run_dir.write_results(nan_to_null(_results(session, result)))
        _plots(session, run_dir, result)
    report = {"kind": session.compiled.kind, "metrics": metrics, "outputs": {},
              "run_dir": result.run_dir}
    if not args.json:
        _print_training(session, result, metrics)
    return report


def _results(session, result) -> dict:
    """What results.json keeps of a run: what it is, when, and its figures."""
    from datetime import datetime, timezone
    return {"spec": session.compiled.name, "spec_file": str(session.compiled.program.main_file),
            "kind": session.compiled.kind,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epochs": result.epochs_run, "seconds": round(result.seconds, 3), "best_epoch": result.best_epoch,
            "best": {k: v for k, v in result.best.items() if k != "epoch"},
            "test": result.test, "converged": result.converged}


def _spec_text(session) -> str:
    from .expand import format_flat
    main = Path(session.compiled.program.main_file)
    original = main.read_text(encoding="utf-8") if main.exists() else ""
    return original + "\n# ---- expanded ----\n# " + format_flat(session.compiled.flat).replace("\n", "\n# ")


def _plots(session, run_dir, result) -> None:
    from .train.loop import evaluate, loss_unit
    from .train.plots import plot_confusion, plot_curves
    from .train.metrics import confusion_matrix
    plot_curves(result.history, run_dir.plots / "curves.png", title=f"{session.compiled.name}",
                best_epoch=result.best_epoch or None, loss_unit=loss_unit(session.model))
    split = "test" if session.data.has("test") else ("dev" if session.data.has("dev") else None)
    if split is None or session.data.stream:
        return
    ev = evaluate(session.model, session.data, split, session.settings, keep_predictions=True)
    names = _label_names(session.compiled.flat.data)
    for loss_id, (guess, gold) in ev.predictions.items():
        target = next((h.target for h in _heads(session) if h.loss == loss_id), None)
        vocab = session.data.vocabs.get(target) if target else None
        if vocab is None or len(vocab) > 40:
            continue
        labels = [names.get(_label_key(x), str(x)) for x in vocab.decode(range(len(vocab)))]
        cm = confusion_matrix(guess, gold, len(vocab))
        plot_confusion(cm, labels, run_dir.plots / f"confusion-{split}.png",
                       title=f"{session.compiled.name}: {split} confusion")


def _label_key(value):
    """Labels compare as numbers when they are numbers (1 and 1.0 are one class)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _label_names(source) -> dict:
    """Class names for numeric labels given to files: ``lines("rt-polarity.pos.gz" -> 1,
    "rt-polarity.neg.gz" -> 0)`` names 1 "pos" and 0 "neg" (what the file names do not share)."""
    call = getattr(source, "call", None)
    mappings = getattr(call, "mappings", None) or getattr(source, "mappings", None) or []
    pairs = []
    for m in mappings:
        value = getattr(getattr(m, "value", None), "value", None)
        if isinstance(m.key, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            pairs.append((Path(m.key).name, float(value)))
    if not pairs:
        return {}
    stems = _distinct_parts([name for name, _ in pairs])
    names: dict = {}
    for stem, (_, value) in zip(stems, pairs):
        names.setdefault(value, [])
        if stem not in names[value]:
            names[value].append(stem)
    return {value: "/".join(stems) for value, stems in names.items()}


def _distinct_parts(names: list[str]) -> list[str]:
    """File names without what they all share at the start and the end, cut at a separator:
    ['rt-polarity.pos.gz', 'rt-polarity.neg.gz'] -> ['pos', 'neg']; one name -> its stem."""
    import os.path
    seps = ".-_ "
    if len(set(names)) < 2:
        return [n.split(".")[0] or n for n in names]
    prefix = os.path.commonprefix(names)
    prefix = prefix[:max((prefix.rfind(c) for c in seps), default=-1) + 1]
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = [i for i, c in enumerate(suffix) if c in seps]
    suffix = suffix[cut[0]:] if cut else ""
    parts = [n[len(prefix):len(n) - len(suffix)] for n in names]
    return parts if all(parts) else names


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
        _emit_json(nan_to_null({"kind": session.compiled.kind, "metrics": {}, "outputs": outputs}))
    else:
        _print_outputs(session, split)
    return 0


def _outputs_for(session, split: str) -> dict:
    data = session.data
    collected: dict[str, list] = {o: [] for o in session.plan.outputs}
    for batch in data.batches(split, 256, dtype=session.model.dtype):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # named below
            out = session.model.forward(batch.arrays, batch.lengths)
        if not all(np.isfinite(v).all() for v in out.values() if np.issubdtype(v.dtype, np.floating)):
            _name_nonfinite(session, batch, split)
        for k, v in out.items():
            v = _squeeze(v)
            if v.ndim >= 2 and batch.mask is not None and v.shape[:2] == batch.mask.shape:
                collected[k] += [v[:n, b].tolist() for b, n in enumerate(batch.lengths)]
            else:
                collected[k] += v.tolist()
    return collected


def _name_nonfinite(session, batch, split: str) -> None:
    """An output came out NaN or infinite: run the batch again checking every value, and say
    which one went bad first, by its name in the spec."""
    from .train.nonfinite import describe_node
    ex = session.model.executor
    have_targets = all(t.name in batch.arrays for t in session.plan.targets)
    ex.check_finite = True
    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            session.model.run(batch.arrays, batch.lengths, need_loss=have_targets and session.plan.loss is not None)
    except RuntimeFailure as e:
        bad = str(e).rsplit(" produced ", 1)[-1] if " produced " in str(e) else "NaN or an infinite value"
        what = describe_node(session.compiled, e.node) if e.node else str(e)
        raise RuntimeFailure(f"{what} produced {bad} in the forward pass over the {split} data", e.node, e.span,
                             session.compiled.diags.sources) from None
    finally:
        ex.check_finite = False
    raise RuntimeFailure(f"an output is NaN or infinite in the forward pass over the {split} data")


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


def cross_validate(args) -> dict:
    """k-fold cross-validation (``nnspec run --folds K``): trains every fold, each in its own
    directory (``fold-01/`` ...) under one run directory, and summarises the held-out test
    figures over the folds (``summarise_folds``) into that directory's results.json."""
    from .session import open_session
    from .train.rundir import RunDir
    k = args.folds
    if k < 2:
        raise UsageError(f"--folds needs at least 2 folds, got {k}")
    parent = None
    reports = []
    for fold in range(k):
        session = open_session(args.spec, overrides=args.set or [], fold=(k, fold), seed=args.seed,
                               dtype="float64" if args.float64 else None, memory_limit=args.memory_limit)
        if parent is None and not args.no_save:
            parent = RunDir(spec_name=f"{session.compiled.name}-{k}fold", root=args.runs)
            parent.write_spec(_spec_text(session))
        if not args.json and not args.quiet:
            print(f"fold {fold + 1}/{k}", file=sys.stderr)
        report = _train(session, args, run_path=parent.path / f"fold-{fold + 1:02d}" if parent else None)
        reports.append(report["metrics"])
    summary = summarise_folds(reports)
    if parent is not None:
        parent.write_results(nan_to_null({"kind": "cross-validation", "spec": session.compiled.name,
                                     "spec_file": str(session.compiled.program.main_file), **summary,
                                     "fold_dirs": [f"fold-{i + 1:02d}" for i in range(k)]}))
    return {"kind": "cross-validation", "metrics": summary, "outputs": {}, "folds": reports,
            "run_dir": str(parent.path) if parent else None}


def summarise_folds(fold_metrics: list[dict]) -> dict:
    """Each held-out test figure over the folds: mean, standard deviation (n - 1), standard error of
    the mean, and the per-fold values; plus the flat keys earlier versions reported."""
    k = len(fold_metrics)
    test_keys = [key for key in fold_metrics[0] if key.startswith("test_")] if fold_metrics else []
    figures = {}
    for key in test_keys:
        values = [m.get(key) for m in fold_metrics]
        valid = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        n = len(valid)
        sd = float(np.std(valid, ddof=1)) if n >= 2 else None
        figures[key[5:]] = {"mean": float(np.mean(valid)) if n else None, "sd": sd,
                            "stderr": sd / math.sqrt(n) if sd is not None else None,
                            "n": n, "per_fold": values}
    acc = figures.get("accuracy", {})
    return {"folds": k, "test": figures,
            "test_accuracy_per_fold": acc.get("per_fold", [None] * k),
            "mean_test_accuracy": acc.get("mean"), "std_test_accuracy": acc.get("sd")}


def _cross_validate(args) -> int:
    if args.inner_folds is not None or args.scheduler or args.workers or args.resume:  # folds as jobs
        from .sweep.commands import run_folds
        if args.inner_folds is not None and args.inner_folds < 2:
            raise UsageError("--inner-folds takes a number from 2")
        summary = run_folds(args)
        report = {"kind": "cross-validation", "metrics": summary, "outputs": {}, "run_dir": summary.get("run_dir")}
    else:
        report = cross_validate(args)
    if args.json:
        _emit_json(nan_to_null(report))
        return 0
    summary = report["metrics"]
    k = summary["folds"]
    nested = f" (settings chosen in each by {args.inner_folds}-fold cross-validation)" if args.inner_folds else ""
    for name, fig in summary["test"].items():
        if fig["mean"] is None:
            continue
        spread = (f" ± {fig['stderr']:.4f} (standard error; sd {fig['sd']:.4f}, n = {fig['n']})"
                  if fig["sd"] is not None else "")
        print(f"{k}-fold cross-validation{nested}: test {name} {fig['mean']:.4f}{spread}")
        print("  per fold: " + "  ".join("-" if v is None else f"{v:.4f}" for v in fig["per_fold"]))
    if report["run_dir"]:
        print(f"run directory {report['run_dir']}")
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
            steps[name] = len(arr)
            feeds[name] = arr[:, None, ...]   # time-major, a batch of one
        else:
            feeds[name] = arr[None, ...]      # a batch of one
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{n} has {k}" for n, k in steps.items())
        raise UsageError(f"--at: the sequences of one example have the same number of steps; {listed}")
    return feeds


def _one_example(a, seq: bool):
    """A batch-of-one array as the example's value: its steps for a sequence (without the batch axis)."""
    a = _squeeze(a)
    if np.ndim(a) == 0:          # a loss: one number
        return a
    return a[:, 0] if seq else a[0]


def _sequences(session) -> set[str]:
    from .plan import LoopStep
    seq = {v.name for v in session.plan.inputs + session.plan.targets if v.seq}
    for s in session.plan.steps:
        seq |= {b.id for b in (s.body if isinstance(s, LoopStep) else [s]) if b.seq}
    return seq


def cmd_grad(args) -> int:
    from .session import open_session
    session = open_session(args.spec, with_data=False, dtype="float64", memory_limit=args.memory_limit)
    feeds = _feeds_at(session, _parse_at(args.at or []))
    if args.of is not None and args.of not in set(session.plan.value_ids()) | {v.name for v in session.plan.inputs}:
        from .errors import did_you_mean
        named = [n for n in session.plan.value_ids() if "#" not in n]
        raise UsageError(f"--of {args.of}: no value of that name{did_you_mean(args.of, named)}")
    value, grads = session.model.gradients(feeds, of=args.of)
    seq = _sequences(session)
    name = args.of or session.plan.loss or session.plan.outputs[0]
    value = _one_example(value, name in seq)
    result = {"value": _to_py(value), "gradients": {k: _to_py(_one_example(g, k in seq) if k in feeds else g)
                                                    for k, g in grads.items()}}
    if args.json:
        _emit_json(nan_to_null(result))
        return 0
    con = _console()
    con.print(f"{name} = {_show(result['value'])}")
    for k, g in result["gradients"].items():
        con.print(f"∂{name}/∂{k} = {_show(g)}")
    return 0


def _to_py(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


def cmd_graph(args) -> int:
    from .render import dot_of, picture, write_graph
    from .session import open_session
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
        from .display import svg
        print(write_graph(dot, Path(args.output), drawn_svg=lambda: svg(pic)), file=sys.stderr)
    else:
        print(dot)
    return 0


def cmd_expand(args) -> int:
    from .expand import format_flat
    from .session import open_session
    session = open_session(args.spec, with_data=False, memory_limit=args.memory_limit)
    if args.plan:
        if args.json:
            print(session.plan.model_dump_json(indent=2))
        else:
            print(session.plan.text())
        return 0
    print(format_flat(session.compiled.flat), end="")
    return 0


def cmd_runs(args) -> int:
    from .train.rundir import list_runs
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory (runs go to ./runs unless --runs says otherwise)")
    runs = list_runs(root)
    if args.json:
        _emit_json(nan_to_null(runs))
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    from rich.table import Table
    table = Table(title=f"runs under {root}", title_justify="left")
    for col in ("spec", "date", "status", "epochs", "best", "size"):
        table.add_column(col, justify="right" if col in ("epochs", "size") else "left", no_wrap=True)
    for r in runs:
        best = f"{r['best']['name']} {_fmt_num(r['best']['value'])}" if r["best"] else ""
        table.add_row(r["spec"], r["date"].replace("T", " ")[:16], r["status"],
                      str(r["epochs"] or ""), best, _fmt_bytes(r["bytes"]))
    from rich.console import Console
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


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

class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake under --json is reported as JSON too."""
    json_errors = False

    def error(self, message: str):
        if _Parser.json_errors:
            _emit_json({"ok": False, "errors": [{"message": f"{self.prog}: {message}"}]})
            sys.exit(2)
        super().error(message)


def _size(text: str) -> int:
    from .limits import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(least: int, most: int | None = None):
    """An argparse type: a whole number from ``least`` (to ``most``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least or (most is not None and value > most):
            bound = f"from {least} to {most}" if most is not None else f"at least {least}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value
    return parse


def _memory_limit_flag(p) -> None:
    p.add_argument("--memory-limit", type=_size, metavar="SIZE",
                   help="refuse a network that needs more memory than this, e.g. 16GiB (default: the train "
                        "block's memory_limit_mb, else NNSPEC_MEMORY_LIMIT, else 4GiB)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnspec", description="Compile, check and run neural-network specs.")
    p.add_argument("--version", action="version", version=f"nnspec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a spec and summarise its values and parameters")
    c.add_argument("spec")
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-data", action="store_true", help="do not read the data (sizes it decides stay symbolic)")
    _memory_limit_flag(c)
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="train the spec if it has a train block, else run it forward on its data")
    r.add_argument("spec")
    r.add_argument("--set", action="append", metavar="SETTING",
                   help='override a training setting, e.g. --set epochs=5 --set "optimizer sgd(lr = 0.1)"')
    r.add_argument("--seed", type=_count(0))
    r.add_argument("--folds", type=_count(2), help="k-fold cross-validation (k >= 2): report mean test accuracy")
    r.add_argument("--inner-folds", type=int, metavar="J",
                   help="nested cross-validation: the spec's sweep chooses settings by J-fold cross-validation "
                        "inside each outer training part")
    r.add_argument("--trials", type=int, help="with --inner-folds: trials of each inner sweep")
    from .sweep.commands import add_cluster_options, add_sweep_command
    add_cluster_options(r)
    r.add_argument("--float64", action="store_true", help="compute in float64")
    r.add_argument("--runs", default="runs", help="where run directories go (default: runs/)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint "
                   "(with --folds: an interrupted cross-validation, keeping its finished folds)")
    r.add_argument("--no-save", action="store_true", help="write no run directory")
    r.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_SECONDS, metavar="SECONDS",
                   help="write the last/ checkpoint when this many seconds passed since the previous one "
                        f"(and at the end; default {CHECKPOINT_SECONDS:g}; 0: after every epoch)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true")
    _memory_limit_flag(r)
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("grad", help="value and gradients of the output or loss at given inputs")
    g.add_argument("spec")
    g.add_argument("--at", nargs="+", metavar="NAME=VALUE", required=True)
    g.add_argument("--of", help="the value to differentiate (default: the loss, else the output)")
    g.add_argument("--json", action="store_true")
    _memory_limit_flag(g)
    g.set_defaults(func=cmd_grad)

    d = sub.add_parser("graph", help="the computation graph as DOT (SVG/PNG with -o when Graphviz is installed)")
    d.add_argument("spec")
    d.add_argument("--at", nargs="+", metavar="NAME=VALUE", help="show forward values and gradients")
    d.add_argument("--unroll", type=_count(1, 100), help="draw a recurrent net unrolled over N steps (at most 100)")
    d.add_argument("-o", "--output", help="write to a .dot, .svg or .png file")
    _memory_limit_flag(d)
    d.set_defaults(func=cmd_graph)

    e = sub.add_parser("expand", help="the spec with every cell and shorthand expanded into plain equations")
    e.add_argument("spec")
    e.add_argument("--plan", action="store_true", help="show the execution plan instead")
    e.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")
    _memory_limit_flag(e)
    e.set_defaults(func=cmd_expand)

    u = sub.add_parser("runs", help="list the run directories: spec, date, status, best figure, size")
    u.add_argument("dir", nargs="?", default="runs", help="where the runs are (default: runs/)")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_runs)

    o = sub.add_parser("ops", help="list the built-in operations")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_ops)

    from .cli_model import add_model_commands
    add_model_commands(sub)
    add_sweep_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        return args.func(args)
    except SpecError as e:
        return _fail(as_json, e.diagnostics.render(color=sys.stderr.isatty()), e.diagnostics)
    except (RuntimeFailure, TrainingError) as e:   # at the failing step's source line, as a spec error
        return _fail(as_json, str(e) if as_json else e.render(color=sys.stderr.isatty()), span=e.span)
    except (DataError, CheckpointError, UsageError, FeedError, SweepError) as e:
        return _fail(as_json, f"error: {e}" if not isinstance(e, DataError) else str(e))
    except TrainingInterrupted as e:
        print(_interrupted_message(e, args), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _interrupted_message(e: TrainingInterrupted, args) -> str:
    """Where the run is and how to go on with it."""
    if e.run_dir is None:
        return f"interrupted in epoch {e.epoch} (nothing was saved: --no-save)"
    if getattr(args, "folds", None):
        return (f"interrupted in epoch {e.epoch} of the fold in {e.run_dir}; this cross-validation ran in "
                f"one process and is not resumed: run it again (one run with --workers K records each "
                f"finished fold, and --resume continues it)")
    if e.resume_epoch == 0:
        return (f"interrupted in epoch {e.epoch}: nothing to resume yet (no checkpoint had been written); "
                f"the run directory {e.run_dir} holds its settings and the metrics so far")
    import shlex
    command = ["nnspec", "run", args.spec, "--resume", e.run_dir]
    for setting in args.set or []:
        command += ["--set", setting]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if args.float64:
        command.append("--float64")
    return (f"interrupted in epoch {e.epoch}; the run directory {e.run_dir} holds a checkpoint at the end of "
            f"epoch {e.resume_epoch}. Continue with:\n  {shlex.join(command)}")


def _fail(as_json: bool, message: str, diags: Diagnostics | None = None, span=None) -> int:
    if as_json:
        where = {"file": span.file, "line": span.line, "column": span.column} if span is not None else {}
        errors = [_flat_error(d) for d in diags.errors] if diags else [{"message": message, **where}]
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
