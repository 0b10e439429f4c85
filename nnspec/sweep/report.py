"""What a sweep leaves for a person: the table of trials (terminal, CSV, JSON), plots, the best spec."""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

from .space import trial_text
from ..train.rundir import nan_to_null


def trial_rows(sweep) -> list[dict]:
    """One row per trial, in trial order: number, state, figure, settings, time, epochs, note."""
    rows = []
    for t in sweep.study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        attrs = t.user_attrs
        if attrs.get("interrupted"):
            state = "interrupted"
        value = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        note = attrs.get("error", "")
        if state == "pruned":
            note = f"pruned after {'fold' if sweep.objective.folds else 'epoch'} {attrs.get('pruned_at')}"
        elif state == "interrupted":
            note = "the driver stopped during this trial; its settings ran again"
        elif "rerun_of" in attrs:
            note = f"rerun of trial {attrs['rerun_of']}"
        rows.append({"trial": t.number, "state": state, sweep.objective.metric: value,
                     **{k: t.params.get(k) for k in (d.name for d in sweep.spec.space.dimensions)},
                     "seconds": attrs.get("seconds"), "epochs": attrs.get("epochs"),
                     "run_dir": attrs.get("run_dir"), "note": note.splitlines()[0] if note else "",
                     **({"error": note} if state == "fail" else {})})
    return rows


def write_results(sweep) -> None:
    rows = trial_rows(sweep)
    (sweep.dir / "results.json").write_text(json.dumps(nan_to_null(rows), indent=2) + "\n", encoding="utf-8")
    columns = [c for c in rows[0] if c != "error"] if rows else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    (sweep.dir / "results.csv").write_text(buf.getvalue(), encoding="utf-8")
    write_best(sweep)


def write_best(sweep) -> Path | None:
    best = sweep.best_trial()
    if best is None:
        return None
    dims = sweep.spec.space.by_name()
    text = trial_text(sweep.spec, best.params, out_dir=sweep.dir)
    header = (f"# The best trial ({best.number}) of the sweep in this directory: "
              f"{sweep.objective.metric} {best.value:.4f} ({sweep.objective.describe()}).\n")
    path = sweep.dir / "best.nn"
    path.write_text(header + text, encoding="utf-8")
    settings = [dims[k].setting_line(v) if dims[k].target == "setting" else f"let {dims[k].key} = {dims[k].text(v)}"
                for k, v in best.params.items() if k in dims]
    (sweep.dir / "best.json").write_text(json.dumps(nan_to_null({
        "trial": best.number, "value": best.value, "objective": sweep.objective.describe(),
        "params": best.params, "settings": settings, "run_dir": best.user_attrs.get("run_dir"),
        "spec": str(path)}), indent=2) + "\n", encoding="utf-8")
    return path


def print_table(sweep, console) -> None:
    from rich.table import Table
    rows = trial_rows(sweep)
    if not rows:
        return
    best = sweep.best_trial()
    table = Table(title=f"sweep of {sweep.spec.path.name}: {sweep.objective.describe()}", title_justify="left")
    columns = [c for c in rows[0] if c not in ("run_dir", "error")]
    for c in columns:
        table.add_column(c, justify="right" if c not in ("state", "note") else "left")
    for row in rows:
        style = "bold green" if best is not None and row["trial"] == best.number else None
        table.add_row(*[_cell(row.get(c)) for c in columns], style=style)
    console.print(table)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_plots(sweep) -> list[Path]:
    """Optimisation history, parallel coordinates and parameter importances as PNGs (Optuna's
    matplotlib views: no plotly needed). A plot the trials cannot support yet is left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views
    out = sweep.dir / "plots"
    out.mkdir(exist_ok=True)
    TrialState = sweep.optuna.trial.TrialState
    complete = sweep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [("history.png", lambda: views.plot_optimization_history(sweep.study,
                                                                    target_name=sweep.objective.metric))]
    if len(complete) >= 2 and sweep.spec.space.dimensions:
        plots.append(("parallel.png", lambda: views.plot_parallel_coordinate(
            sweep.study, target_name=sweep.objective.metric)))
    if len(complete) >= 3 and len(sweep.spec.space.dimensions) >= 2:
        from optuna.importance import PedAnovaImportanceEvaluator
        plots.append(("importance.png", lambda: views.plot_param_importances(
            sweep.study, evaluator=PedAnovaImportanceEvaluator(), target_name=sweep.objective.metric)))
    written = []
    for name, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every trial has the same figure
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(11, 5.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
