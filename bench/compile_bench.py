"""How fast nnspec compiles big specs, and how much memory a BPTT step takes.

    python bench/compile_bench.py                      # 100, 1,000 and 10,000 equations + memory
    python bench/compile_bench.py --sizes 100,1000 --no-memory
    python bench/compile_bench.py --json out.json

**Compile time.** Generated specs of N equations: a chain of layers over a
sequence input, cycling through a dense layer, an elementwise mix of the two
previous layers, a recurrent layer (an Elman unit reading its own previous
step) and, every 25th, a library LSTM cell (an equation that expands into six).
Each stage of the pipeline is timed on its own (best of ``--repeats``):
parse (text -> AST), validate (expansion, graph, loop analysis, shapes: what
``nnspec check`` does), plan (``build_plan``) and optimise (``nnspec.optimize``).
The target: 1,000 equations in under a second, and time growing about linearly
(the ``per eq`` column should stay flat from 100 to 10,000).

**Memory.** For recurrent bench configs: tracemalloc's peak during one train
step (after a first step, so that buffers made once are already there) next to
the analytic size of the activations the backward pass needs
(``configs.activation_bytes``), for nnspec and the hand-written NumPy step, and
what the nnspec tape keeps (values, read buffers) after the forward pass.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from nnspec.compiler import compile_program  # noqa: E402
from nnspec.errors import Diagnostics  # noqa: E402
from nnspec.loader import load_text  # noqa: E402
from nnspec.optimize import optimize_plan  # noqa: E402


def generate(n: int, width: int = 16, lstm_every: int = 25) -> str:
    """A valid spec of n equations (plus declarations and a loss): dense layers, elementwise
    mixes of the last two layers, recurrent layers and, every ``lstm_every``-th, a library LSTM.
    tests/test_compile_scaling.py counts the compiler's work on these too."""
    lines = [f"network generated_{n}", "", f"input x[{width}] : seq", f"target y[{width}] : seq", ""]
    prev, prev2 = "x", "x"
    for i in range(1, n + 1):
        name = f"a{i}"
        if i % lstm_every == 0:
            rhs = f"lstm({prev}, H = {width})"
            lines.append(f"{name} = {rhs}")
        elif i % 4 == 1:
            lines.append(f"{name}[{width}] = tanh(W{i} @ {prev} + b{i})")
        elif i % 4 == 2:
            lines.append(f"{name} = {prev} * {prev2} + {prev}")
        elif i % 4 == 3:
            lines.append(f"{name}[{width}] = tanh(U{i} @ {name}[t-1] + V{i} @ {prev} + c{i})")
        else:
            lines.append(f"{name}[{width}] = sigmoid(W{i} @ {prev} + U{i} @ {prev2} + b{i})")
        prev2, prev = prev, name
    lines += ["", f"loss mse({prev}, y)", ""]
    return "\n".join(lines)


def stages(text: str) -> dict[str, float]:
    """CPU seconds (process time: steady while other work loads the machine) per pipeline stage
    for one compile of text."""
    t = {}
    t0 = time.process_time()
    diags = Diagnostics()
    program = load_text(text, "<generated>", diags)
    diags.raise_if_errors()
    t["parse"] = time.process_time() - t0

    plan = compile_program(program, diags, optimize=False, timings=t).plan   # validate + plan

    t0 = time.process_time()
    opt = optimize_plan(plan)
    t["optimise"] = time.process_time() - t0
    t["total"] = sum(t.values())
    t["plan steps"] = plan.op_count()
    t["optimised steps"] = opt.op_count()
    return t


def compile_times(sizes, repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        text = generate(n)
        runs = [stages(text) for _ in range(repeats if n < 10000 else max(1, repeats // 2))]
        best = {k: min(r[k] for r in runs) for k in runs[0]}
        best["equations"] = n
        rows.append(best)
    return rows


def format_compile(rows) -> str:
    head = f"{'equations':>10} {'parse s':>9} {'validate s':>11} {'plan s':>8} {'optimise s':>11} " \
           f"{'total s':>9} {'per eq ms':>10} {'steps':>7} {'optimised':>10}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['equations']:>10,} {r['parse']:>9.3f} {r['validate']:>11.3f} {r['plan']:>8.3f} "
                   f"{r['optimise']:>11.3f} {r['total']:>9.3f} {1e3 * r['total'] / r['equations']:>10.3f} "
                   f"{int(r['plan steps']):>7,} {int(r['optimised steps']):>10,}")
    return "\n".join(out)


# ---- memory --------------------------------------------------------------------------------

def memory(config_names) -> list[dict]:
    from bench.configs import CONFIGS, activation_bytes
    from bench.harness import traced_memory
    from bench.nnspec_impl import NnspecImpl, build
    from bench.numpy_impl import NumpyImpl

    rows = []
    for name in config_names:
        cfg = CONFIGS[name]
        row = {"config": name, "activation_bytes": activation_bytes(cfg, np.float32)}
        for impl in (NnspecImpl(), NumpyImpl()):
            row[impl.name] = traced_memory(impl, cfg, np.float32)
        # what the tape keeps after a forward pass
        model, feeds, _ = build(cfg, np.float32)
        tape = model.run(feeds, train=True, rng=np.random.default_rng(0))
        kept = {id(a.base if a.base is not None else a): a.base if a.base is not None else a
                for k, a in tape.values.items()
                if isinstance(a, np.ndarray) and k not in model.params and a.ndim >= 2}
        for run in tape.loops.values():
            for a in run.reads.values():
                b = a.base if a.base is not None else a
                kept[id(b)] = b
        row["tape_bytes"] = int(sum(a.nbytes for a in kept.values()))
        params = sum(a.nbytes for a in model.params.values())
        row["param_bytes"] = int(params)
        rows.append(row)
        del model, tape
        gc.collect()
    return rows


def format_memory(rows) -> str:
    mb = 2 ** 20
    head = (f"{'config':14} {'act MB':>8} {'nnspec tape MB':>15} {'nnspec step peak MB':>20} "
            f"{'numpy step peak MB':>19} {'params MB':>10}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['config']:14} {r['activation_bytes'] / mb:>8.2f} {r['tape_bytes'] / mb:>15.2f} "
                   f"{r['nnspec']['step_peak_bytes'] / mb:>20.2f} {r['numpy']['step_peak_bytes'] / mb:>19.2f} "
                   f"{r['param_bytes'] / mb:>10.2f}")
    out.append("act MB: activations the backward pass needs (bench/configs.py). tape: arrays the forward "
               "pass keeps for the backward pass (values of the plan, read buffers). step peak: "
               "tracemalloc's peak during a train step after the first (weights, gradients, pooled "
               "buffers and temporaries).")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/compile_bench.py", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="equation counts (comma-separated)")
    ap.add_argument("--repeats", type=int, default=3, help="compiles per size (the best is reported)")
    ap.add_argument("--memory-configs", default="lstm,gru,bilstm_tagger")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report = {"compile": compile_times(sizes, args.repeats)}
    print(format_compile(report["compile"]))
    if not args.no_memory:
        report["memory"] = memory([c for c in args.memory_configs.split(",") if c])
        print()
        print(format_memory(report["memory"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
