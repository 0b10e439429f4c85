"""The compiler's work grows linearly with the size of a spec.

Work is counted in function calls (Python and C, through ``sys.setprofile``) for each
stage of the pipeline, on a spec and on the same kind of spec four times longer. A
step that is quadratic (a rescan of every pending node per recurrent layer, a walk
of the whole graph for every node, a search of every earlier error for each new
one) makes its stage's ratio well above 4, even at these small sizes. No clock is
read, so the result does not depend on the machine or on its load.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

import nnspec
from bench.compile_bench import generate
from nnspec import compiler

STAGES = ["load_text", "expand", "build_graph", "find_components", "infer_time_and_type", "check_ends",
          "infer_shapes", "build_plan", "optimize_plan"]
SMALL, LARGE = 50, 200
LINEAR = 4.25  # the largest ratio of work for 4 times the equations (measured: 3.9-4.05)


def layers(n: int) -> str:
    """A valid spec of n equations, the benchmark's kind (bench/compile_bench.py), narrow and with
    a library LSTM every 10th layer."""
    return generate(n, width=4, lstm_every=10)


def every_layer_an_output(n: int) -> str:
    """What each output needs is found in one walk, not one walk of the graph per output."""
    return layers(n) + "".join(f"output a{i}\n" for i in range(1, n + 1) if i % 10 != 0)


def one_early_mistake(n: int) -> str:
    """Every value after the first layer is downstream of its mistake (and must not repeat it)."""
    return layers(n).replace("a1[4] = tanh(W1 @ x + b1)", "a1[4] = concat(x, x)", 1)


def sizes_missing(n: int) -> str:
    """Recurrent layers whose sizes nothing fixes: each concat waits for a size until the end."""
    lines = ["input x[4] : seq", "target y[4] : seq"]
    prev = "x"
    for i in range(1, n + 1):
        lines.append(f"h{i} = tanh(W{i} @ concat({prev}, h{i}[t-1]) + b{i})")
        prev = f"h{i}"
    return "\n".join(lines + [f"loss mse({prev}, y)"]) + "\n"


def work_per_stage(text: str, monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(STAGES, 0)

    def counted(stage, run):
        def wrapper(*args, **kwargs):
            calls = 0

            def count(frame, event, arg):
                nonlocal calls
                if event in ("call", "c_call"):
                    calls += 1

            sys.setprofile(count)
            try:
                return run(*args, **kwargs)
            finally:
                sys.setprofile(None)
                counts[stage] += calls
        return wrapper

    with monkeypatch.context() as m:
        for stage in STAGES:
            m.setattr(compiler, stage, counted(stage, getattr(compiler, stage)))
        try:
            compiler.compile_text(text)
        except nnspec.SpecError:
            pass
    return counts


@pytest.mark.parametrize("make", [layers, every_layer_an_output, one_early_mistake, sizes_missing])
def test_compile_work_grows_linearly(make, monkeypatch):
    nnspec.compile_text(layers(3))  # the grammar and the standard library are made once per process
    small, large = work_per_stage(make(SMALL), monkeypatch), work_per_stage(make(LARGE), monkeypatch)
    ratios = {stage: large[stage] / small[stage] for stage in STAGES if small[stage]}
    assert "infer_shapes" in ratios
    superlinear = {stage: round(r, 2) for stage, r in ratios.items() if r >= LINEAR}
    assert not superlinear, f"work for {LARGE // SMALL}x the equations: {superlinear}"


ROOT = Path(__file__).resolve().parent.parent


SPEC_FILES = sorted(p.name for p in (ROOT / "specs").glob("*.nn"))


@pytest.mark.parametrize("source", ["layers", "every_layer_an_output"] + SPEC_FILES)
def test_a_compile_leaves_no_cyclic_garbage(source):
    """The collector is paused while the compiler runs (nnspec/gcpause.py), so the compiler makes no
    reference cycle (a nested function that calls itself is one, and keeps its pass's working state
    alive until a collection finds it)."""
    nnspec.compile_text(layers(3))
    gc.collect()
    if source.endswith(".nn"):
        compiled = compiler.compile_file(ROOT / "specs" / source)
    else:
        compiled = compiler.compile_text(globals()[source](60))
    assert gc.isenabled()
    assert gc.collect() == 0, "the compile left objects only a cycle keeps alive"
    assert compiled.plan.steps


class _Cyclic:
    def __init__(self):
        self.me = self


def test_compiling_again_and_again_leaves_the_callers_cyclic_garbage_to_the_collector():
    """What a program makes between compiles (a training step, a data loader: objects in cycles)
    is freed by the collector as usual. A pause that ended by promoting every object to the oldest
    generation (gc.freeze, then unfreeze) kept all of it: the oldest generation's full collection
    waits for its own count to grow by a quarter, which objects moved there that way never add to;
    a process compiling many times (a sweep, the fuzzer) grew by 0.5 GB every 1,000 compiles."""
    spec = "input x[3] : seq\ntarget y[2] : seq\nh = lstm(x, H = 4)\nloss mse(Z @ h + d, y)\n"
    nnspec.compile_text(spec)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(120):
        junk = [_Cyclic() for _ in range(200)]
        del junk
        nnspec.compile_text(spec)
    grown = len(gc.get_objects()) - before
    assert grown < 5_000, f"{grown} objects more after 120 compiles (24,000 made in cycles between them)"
