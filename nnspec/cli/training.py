"""Training one session as ``nnspec run`` does: the run directory, its results.json and plots,
and the summary printed at the end."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..train.loop import CHECKPOINT_SECONDS
from ..train.rundir import nan_to_null
from .forward import print_outputs
from .output import console, fmt_num
from .plotting import Plotter


def train_session(session, args, run_path: Path | None = None) -> dict:
    """Train one session as ``nnspec run`` does; ``run_path``: the run directory to use (a fold's)."""
    from ..train.loop import Trainer
    from ..train.rundir import RunDir
    if session.data is None:
        raise UsageError("training needs data: add a data statement to the spec")
    if session.plan.loss is None:
        raise UsageError("training needs a loss to minimise: add one to the spec, e.g. 'loss cross_entropy(p, y)'")
    run_dir = None
    if not args.no_save:
        path = Path(args.resume) if args.resume else run_path
        run_dir = RunDir(spec_name=session.compiled.name, root=args.runs, path=path)
        run_dir.write_spec(spec_text(session))
        run_dir.write_settings(session.settings.model_dump())
    with Plotter(helper=run_dir is not None) as plotter:  # matplotlib loads while the network trains
        trainer = Trainer(session.model, session.data, session.settings, run_dir=run_dir,
                          spec_hash=session.spec_hash, quiet=args.quiet or args.json,
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
            _plots(session, run_dir, result, plotter)
        if not args.json:
            _print_training(session, result, metrics)
        plotter.finish()  # the plots are written when the command returns
    return {"kind": session.compiled.kind, "metrics": metrics, "outputs": {}, "run_dir": result.run_dir}


def _results(session, result) -> dict:
    """What results.json keeps of a run: what it is, when, and its figures."""
    from datetime import datetime, timezone
    return {"spec": session.compiled.name, "spec_file": str(session.compiled.program.main_file),
            "kind": session.compiled.kind,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epochs": result.epochs_run, "seconds": round(result.seconds, 3), "best_epoch": result.best_epoch,
            "best": {k: v for k, v in result.best.items() if k != "epoch"},
            "test": result.test, "converged": result.converged}


def spec_text(session) -> str:
    from ..expand import format_flat
    main = Path(session.compiled.program.main_file)
    original = main.read_text(encoding="utf-8") if main.exists() else ""
    return original + "\n# ---- expanded ----\n# " + format_flat(session.compiled.flat).replace("\n", "\n# ")


def _plots(session, run_dir, result, plotter: Plotter) -> None:
    """The run's plots, handed to ``plotter`` (drawn by ``plotter.finish()``)."""
    from ..train.loop import evaluate, loss_unit
    from ..train.metrics import confusion_matrix
    plotter.curves(result.history, run_dir.plots / "curves.png", title=f"{session.compiled.name}",
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
        plotter.confusion(cm, labels, run_dir.plots / f"confusion-{split}.png",
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
    from ..train.loop import find_heads
    return find_heads(session.model)


def _print_training(session, result, metrics) -> None:
    con = console()
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
        con.print(f"best epoch {result.best_epoch}: " + "  ".join(f"{k} {fmt_num(v)}" for k, v in best.items()))
    test = {k: v for k, v in metrics.items() if k.startswith("test_")}
    if test:
        con.print("held-out test: " + "  ".join(f"{k[5:]} {fmt_num(v)}" for k, v in test.items()))
    if not best and not test:
        last = result.history[-1] if result.history else {}
        con.print("final: " + "  ".join(f"{k} {fmt_num(v)}" for k, v in last.items() if k != "epoch"))
    if session.compiled.flat.data is not None and not session.data.stream and session.data.size("train") <= 16:
        print_outputs(session, "train")
    con.print(f"trained {result.epochs_run} epoch{'s' * (result.epochs_run != 1)} in {result.seconds:.1f}s" +
              (f"; run directory {result.run_dir}" if result.run_dir else ""))
