"""A network's outputs on its data: ``nnspec run`` on a spec without a train block, the table
printed after training a small data set, and the notebook's outputs table."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..plan import plan_axes
from ..runtime import RuntimeFailure
from ..train.rundir import nan_to_null
from .output import console, emit_json, show, squeeze


def run_forward(session, args) -> int:
    if session.data is None:
        raise UsageError("nothing to run: the spec has no data (add 'data inline { ... }') and no train block")
    split = "all" if session.data.has("all") else "train"
    outputs = outputs_for(session, split)
    if args.json:
        emit_json(nan_to_null({"kind": session.compiled.kind, "metrics": {}, "outputs": outputs}))
    else:
        print_outputs(session, split)
    return 0


def outputs_for(session, split: str, lists: bool = True) -> dict:
    """Each output's value for every example of the split, in order: nested lists (JSON, the notebook),
    or with ``lists=False`` each example's array as it is (the printed table shows a few numbers of
    each: a wide output, ten million classes, is not made into a list of Python floats first)."""
    data = session.data
    each = (lambda a: a.tolist()) if lists else (lambda a: a)    # an example's value, as given out
    collected: dict[str, list] = {o: [] for o in session.plan.outputs}
    axes = plan_axes(session.plan)
    # (batches of the training batch, the one the memory check allowed for: an output of ten million
    # classes over the whole of a small data set at once took more than the limit)
    for batch in data.batches(split, session.settings.batch, dtype=session.model.dtype):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # named below
            out = session.model.forward(batch.arrays, batch.lengths)
        if not all(np.isfinite(v).all() for v in out.values() if np.issubdtype(v.dtype, np.floating)):
            _name_nonfinite(session, batch, split)
        for k, v in out.items():
            v = squeeze(v)
            lengths = batch.lengths
            if isinstance(lengths, dict):   # several axes: the lengths of the output's own (innermost) axis
                lengths = lengths.get((axes.get(k) or ("time",))[-1])
            if (v.ndim >= 2 and lengths is not None and batch.mask is not None
                    and v.shape[:2] == (int(lengths.max()), len(lengths))):
                collected[k] += [each(v[:n, b]) for b, n in enumerate(lengths)]
            else:
                collected[k] += [each(x) for x in v]
    return collected


def _name_nonfinite(session, batch, split: str) -> None:
    """An output came out NaN or infinite: run the batch again checking every value, and say
    which one went bad first, by its name in the spec."""
    from ..train.nonfinite import describe_node
    have_targets = all(t.name in batch.arrays for t in session.plan.targets)
    e = session.model.diagnose(batch.arrays, batch.lengths,
                               need_loss=have_targets and session.plan.loss is not None)
    if e is not None:
        bad = str(e).rsplit(" produced ", 1)[-1] if " produced " in str(e) else "NaN or an infinite value"
        what = describe_node(session.compiled, e.node) if e.node else str(e)
        raise RuntimeFailure(f"{what} produced {bad} in the forward pass over the {split} data", e.node, e.span,
                             session.compiled.diags.sources)
    raise RuntimeFailure(f"an output is NaN or infinite in the forward pass over the {split} data")


def print_outputs(session, split: str) -> None:
    con = console()
    outputs = outputs_for(session, split, lists=False)
    enc = session.data.splits[split]
    inputs = [f.name for f in session.data.fields if f.role == "input"]
    from rich.table import Table
    table = Table()
    for name in inputs + list(outputs):
        table.add_column(name)
    for i in range(len(enc)):
        row = [show(enc.data[n][i]) for n in inputs] + [show(outputs[o][i]) for o in outputs]
        table.add_row(*row)
    con.print(table)
