"""The oracles that must agree on every generated spec, and one spec's check against all of them.

Every run is float64 and computes the outputs, the loss and the gradients of one objective:
the loss (when the spec has one) plus ``sum(output * G)`` over the outputs, for a fixed random
``G`` that is zero at padding steps. The oracles:

  fast     the fast runtime against the reference engine (``ExecOptions.reference()``),
           both on the optimised plan;
  optimize the optimised plan against the unoptimised one, both on the reference interpreter;
  fd       central finite differences of the objective (unoptimised plan, reference
           interpreter) along a random direction of every parameter and every real input, against
           the gradient the runtime computed;
  torch    PyTorch autograd on a translation of the expanded equations
           (``tests/difftest/torch_oracle.py``; skipped when it or torch is missing);
  batch    the padded batch against each sequence run alone over its own length: outputs at real
           steps, the loss (each loss term weighted as the batch averages it: over examples, or
           over real steps), every gradient (and zero gradient at padding);
  repeat   the fast runtime's second and third pass on one geometry, and again after a pass on
           another geometry, against its first pass (the runtime keeps prepared runs per geometry);
  training (specs with a loss) the training path: single-use passes (the tape spent by its backward
           pass: spare and lent arrays, activations computing in their input's array) for the
           parameters' gradients of the loss alone, three on one executor (the general dispatch,
           then the prepared pass made and used again), against the reference interpreter;
  decode   (specs with a ``decode`` declaration) greedy decoding by nnspec.decode, a batch at once,
           against one example at a time, each token the argmax of a full forward pass of PyTorch's
           translation (the reference interpreter without torch) fed the tokens written so far;
           beam search with beam 1 against greedy; scores of ended sequences (greedy, beam 3) rescored.

Three more oracles run only when asked for (``--oracles segments,fused,plain``; they compile kernels
for every generated loop body or activation width, a second or so each, so the default run leaves
them out):

  segments (specs whose loops get fused segments, float32, numba installed) the loops' elementwise
           steps as fused kernels (``runtime/segments.py``) against the op-by-op NumPy path, both
           float32 on the NumPy loop path; tolerance ``TOLERANCES["segments"]`` (float32 rounding).
  fused    (specs with a loop the runtime fuses, numba installed) each small loop as two compiled
           kernels (``runtime/fused.py``: the forward steps and BPTT) from the first pass, two passes
           (the second on the arrays kept from the first), and three single-use training passes of a
           model, against the reference engine.
  plain    (specs with a plain step the kernels compute, float32, numba installed) the plain steps'
           compiled kernels (``runtime/plainkernels.py``: an activation in a prepared pass, the
           softmax cross-entropy) from the first pass, against the NumPy path: three passes of the
           objective (the prepared pass made, then used again) and three single-use training passes
           of a float32 model; tolerance ``TOLERANCES["plain"]``.

Errors are relative: an output's to its largest value (at least 1), a gradient's to the largest
gradient of the run. The tolerance is 1e-6.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import random
import traceback
from dataclasses import dataclass, field

import numpy as np

from nnspec import SpecError, compile_text
from nnspec.ops import REGISTRY
from nnspec.optimize import optimize_plan
from nnspec.plan import LoopStep, plan_axes
from nnspec.runtime import ExecOptions, Executor

try:  # another helper's oracle; absent on some branches
    from .torch_oracle import torch_run
except ImportError:  # pragma: no cover - depends on the branch and on torch being installed
    torch_run = None

ORACLES = ["fast", "optimize", "fd", "torch", "batch", "repeat", "training", "decode"]
EXTRA_ORACLES = ["segments", "fused", "plain"]   # only when asked for (see above)
TOLERANCE = 1e-6
# float32 against float32, kernels' exp and tanh within a few 1e-7 of NumPy's: rounding that a
# random spec's chain of exponentials and quotients may amplify; a wrong formula errs by O(1)
TOLERANCES = {"segments": 1e-4, "plain": 1e-4}
BINDINGS = {f"vocab(w{i})": 5 for i in range(1, 200)}
BINDINGS.update({f"vocab(d{i})": 6 for i in range(1, 200)})    # decoded: <pad> <unk> <s> </s> and two tokens
LOSS_OPS = {name for name, op in REGISTRY.items() if op.prediction is not None}
REFERENCE = ExecOptions.reference()   # every step by nnspec/runtime/reference.py


@dataclass
class Failure:
    oracle: str
    message: str
    error: float = math.inf


@dataclass
class Outcome:
    """What checking one spec found. ``rejected``: the compiler's message, when it refused the spec."""
    text: str
    rejected: str | None = None
    errors: dict[str, float] = field(default_factory=dict)     # oracle -> worst relative error
    skipped: dict[str, str] = field(default_factory=dict)      # oracle -> why it did not run
    failures: list[Failure] = field(default_factory=list)
    plan: object = None                                          # the unoptimised plan, when it compiled

    @property
    def compiled(self) -> bool:
        return self.rejected is None


@dataclass
class Run:
    values: dict[str, np.ndarray]     # outputs and the loss
    grads: dict[str, np.ndarray]      # parameters and real inputs
    tape_grads: dict | None = None


# ---- data --------------------------------------------------------------------------------------

@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    lengths: np.ndarray | None
    steps: int
    batch: int
    # sequences on other axes than the main one (``time``): axis -> their lengths
    other_axes: dict = field(default_factory=dict)

    @property
    def run_lengths(self):
        """The lengths as the runtime takes them: per axis when there are several."""
        return {"time": self.lengths, **self.other_axes} if self.other_axes else self.lengths

    def length(self, plan, name: str, i: int, default: int) -> int:
        """Example i's steps on the axis of the input ``name``."""
        axis = _input_axis(plan, name)
        return int(self.other_axes[axis][i]) if axis in self.other_axes else default


def _input_axis(plan, name: str) -> str:
    v = next((v for v in plan.inputs + plan.targets if v.name == name), None)
    return (v.axes or ["time"])[-1] if v is not None and v.seq else "time"


def make_batch(plan, seed: int, T: int | None = None, B: int | None = None, lengths=None) -> Batch:
    """Random inputs and targets padded as nnspec.data pads them: 0 for reals and tokens (<pad>),
    -1 for class labels. Sequences of mixed lengths; the longest need not come first."""
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    T = T or r.randint(1, 5)
    B = B or r.choice([1, 2, 3, 3])
    if lengths is None:
        lengths = [T] + [r.randint(1, T) for _ in range(B - 1)]
        r.shuffle(lengths)
    lengths = np.array(lengths, dtype=np.int64)
    has_seq = any(v.seq for v in plan.inputs + plan.targets)
    main_real = np.arange(T)[:, None] < lengths[None, :]
    other = {}   # axis -> (T, lengths) of sequences on other axes than time: their own lengths
    feeds = {}
    for v in plan.inputs:
        if v.nested:   # the characters of every word: (T_char, T * B), word t of example b in column t * B + b
            Tc = r.randint(1, 5)
            counts = np.array([[r.randint(1, Tc) if t < lengths[b] else 0 for b in range(B)] for t in range(T)],
                              dtype=np.int64).reshape(-1)
            counts[np.argmax(counts)] = Tc
            card = v.card if isinstance(v.card, int) else 5
            ids = rng.integers(1, card, size=(Tc, T * B))
            ids[~(np.arange(Tc)[:, None] < counts[None, :])] = 0
            feeds[v.name] = ids
            other[v.axes[-1]] = (Tc, counts)
    for v in plan.inputs + plan.targets:
        axis = _input_axis(plan, v.name)
        if v.seq and axis != "time" and axis not in other:
            Tk = r.randint(1, 5)
            other[axis] = (Tk, np.array([Tk] + [r.randint(1, Tk) for _ in range(B - 1)], dtype=np.int64))
    for v in plan.inputs + plan.targets:
        if v.name in feeds:
            continue
        axis = _input_axis(plan, v.name)
        Tv, real = (other[axis][0], np.arange(other[axis][0])[:, None] < other[axis][1][None, :]) \
            if axis in other else (T, main_real)
        shape = ((Tv, B) if v.seq else (B,)) + tuple(v.shape)
        if v.integer:
            card = v.card if isinstance(v.card, int) else 5
            low = 1 if v.role == "input" else 0           # token 0 is <pad>
            a = rng.integers(low, card, size=shape)
            if v.seq:
                a[~real] = 0 if v.role == "input" else -1
        else:
            a = rng.normal(size=shape)
            if v.seq:
                a = a * real.reshape(real.shape + (1,) * (a.ndim - 2))
        feeds[v.name] = a
    return Batch(feeds, lengths if has_seq else None, T if has_seq else 0, B, {a: ls for a, (_, ls) in other.items()})


def random_params(plan, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 7)
    return {p.name: rng.normal(scale=0.5, size=tuple(p.shape)) for p in plan.params}


def output_seeds(plan, values, batch: Batch, seed: int) -> dict[str, np.ndarray]:
    """The G of sum(output * G): random, zero at padding steps."""
    rng = np.random.default_rng(seed + 11)
    seeds = {}
    for o in plan.outputs:
        g = rng.normal(size=values[o].shape)
        if batch.lengths is not None and _is_seq(plan, o):
            g = g * _real_on(plan, batch, o, g.ndim)
        seeds[o] = g
    return seeds


def _axis_lengths(batch: Batch, axis: str) -> np.ndarray:
    return batch.other_axes[axis] if axis in batch.other_axes else batch.lengths


def _real_on(plan, batch: Batch, name: str, ndim: int) -> np.ndarray:
    """Which positions of a sequence value are real, (T_a1, ..., T_ak, B, 1, ...) for its axes."""
    axes = plan_axes(plan).get(name, ()) or ("time",)
    real = np.ones((batch.batch,), dtype=bool)
    for axis in reversed(axes):
        ls = _axis_lengths(batch, axis)
        steps = batch.steps if axis not in batch.other_axes else int(ls.max())
        on = np.arange(steps)[:, None] < ls[None, :]
        real = on.reshape((steps,) + (1,) * (real.ndim - 1) + (batch.batch,)) & real[None]
    return real.reshape(real.shape + (1,) * (ndim - real.ndim)).astype(float)


def _example(plan, batch: Batch, name: str, a: np.ndarray, i: int, seq: set) -> np.ndarray:
    """Example i's part of a value laid out for the batch: its real steps on each of its axes."""
    if name not in seq:
        return a[i:i + 1]
    axes = plan_axes(plan).get(name, ()) or ("time",)
    return a[tuple(slice(0, int(_axis_lengths(batch, axis)[i])) for axis in axes) + (slice(i, i + 1),)]


def _real(batch: Batch, ndim: int) -> np.ndarray:
    real = (np.arange(batch.steps)[:, None] < batch.lengths[None, :]).astype(float)
    return real.reshape(real.shape + (1,) * (ndim - 2))


def _seq_ids(plan) -> set[str]:
    ids = {v.name for v in plan.inputs + plan.targets if v.seq}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            if b.seq:
                ids.add(b.id)
    return ids


def _is_seq(plan, name: str) -> bool:
    return name in _seq_ids(plan)


# ---- running -----------------------------------------------------------------------------------

def run(ex: Executor, params, batch: Batch, seeds: dict | None, keep_all=False) -> Run:
    """Forward and backward of the objective (loss + sum(output * G)); copies of what matters."""
    plan = ex.plan
    tape = ex.forward(params, batch.feeds, lengths=batch.run_lengths)
    values = {o: np.array(tape.values[o], copy=True) for o in plan.outputs}
    if plan.loss is not None:
        values["<loss>"] = np.array(tape.values[plan.loss], copy=True)
    s = dict(seeds or {})
    if plan.loss is not None:
        s[plan.loss] = np.ones_like(tape.values[plan.loss])
    grads = ex.backward(tape, seeds=s)
    leaves = set(params) | {v.name for v in plan.inputs if not v.integer}
    out = {k: np.array(grads[k], copy=True) if k in grads else np.zeros_like(
        params[k] if k in params else batch.feeds[k], dtype=float) for k in leaves}
    return Run(values, out, dict(grads) if keep_all else None)


def objective(ex: Executor, params, batch: Batch, seeds: dict) -> float:
    tape = ex.forward(params, batch.feeds, lengths=batch.run_lengths)
    total = 0.0
    if ex.plan.loss is not None:
        total += float(np.sum(tape.values[ex.plan.loss]))
    for o, g in seeds.items():
        total += float(np.sum(tape.values[o] * g))
    return total


def compare(oracle: str, got: Run, want: Run, plan, batch: Batch, out: Outcome, what: str = "") -> None:
    """Worst relative error of outputs (at real steps), the loss and every gradient."""
    worst, where = 0.0, ""
    for k, w in want.values.items():
        g = got.values.get(k)
        if g is None or np.shape(g) != np.shape(w):
            out.failures.append(Failure(oracle, f"{what}{k}: shape {np.shape(g)} != {np.shape(w)}"))
            out.errors[oracle] = math.inf
            return
        if batch.lengths is not None and k in plan.outputs and _is_seq(plan, k):
            mask = _real_on(plan, batch, k, w.ndim)
            g, w = g * mask, w * mask
        e = float(np.abs(g - w).max() / max(np.abs(w).max(), 1.0)) if w.size else 0.0
        if not e <= worst:
            worst, where = e, k
    scale = max([np.abs(w).max() for w in want.grads.values() if w.size] + [1e-3])
    for k, w in want.grads.items():
        g = got.grads.get(k)
        if g is None or np.shape(g) != np.shape(w):
            out.failures.append(Failure(oracle, f"{what}gradient of {k}: shape {np.shape(g)} != {np.shape(w)}"))
            out.errors[oracle] = math.inf
            return
        e = float(np.abs(g - w).max() / scale) if w.size else 0.0
        if not e <= worst:
            worst, where = e, "gradient of " + k
    note(out, oracle, worst, f"{what}{where}")


def _finite(r: Run) -> bool:
    """Whether a run's values and gradients are all finite numbers."""
    return all(np.isfinite(a).all() for part in (r.values, r.grads) for a in part.values())


def note(out: Outcome, oracle: str, err: float, where: str) -> None:
    out.errors[oracle] = max(out.errors.get(oracle, 0.0), err) if not math.isnan(err) else math.inf
    if not err <= TOLERANCES.get(oracle, TOLERANCE):
        out.failures.append(Failure(oracle, f"{where}: relative error {err:.3g}", err))


def _crash(oracle: str, out: Outcome, exc: BaseException) -> None:
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if "/nnspec/" in f.filename or "torch_oracle" in f.filename] or tb[-1:]
    site = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].name}" if frames else "?"
    out.failures.append(Failure(oracle, f"crash {type(exc).__name__} in {site}: {str(exc).splitlines()[0][:200]}"))
    out.errors[oracle] = math.inf


# ---- the check --------------------------------------------------------------------------------

def check(text: str, seed: int = 0, oracles=ORACLES) -> Outcome:
    """Check one spec against every oracle asked for; never raises for a failing oracle."""
    with np.errstate(all="ignore"):   # a NaN shows up as an error of the oracle, not as a warning
        return _check(text, seed, oracles)


def _check(text: str, seed: int, oracles) -> Outcome:
    out = Outcome(text)
    try:
        raw = compile_text(text, bindings=BINDINGS, optimize=False)
        opt = dataclasses.replace(raw, plan=optimize_plan(raw.plan))   # what compile_text(text) makes
    except SpecError as e:
        out.rejected = str(e)
        return out
    except Exception as e:  # a crash of the front end is a finding too
        out.rejected = f"crash {type(e).__name__}: {e}"
        return out
    plan, base = opt.plan, raw.plan
    out.plan = base
    params = random_params(base, seed)
    batch = make_batch(base, seed)
    ref_raw = Executor(base, dtype=np.float64, options=REFERENCE)
    try:
        tape = ref_raw.forward(params, batch.feeds, lengths=batch.run_lengths)
        seeds = output_seeds(base, tape.values, batch, seed)
        del tape
        want = run(ref_raw, params, batch, seeds, keep_all=True)
    except Exception as e:   # the reference run on the unoptimised plan: what these oracles compare with
        for o in ("optimize", "fd", "batch"):
            if o in oracles:
                _crash(o, out, e)
        return out
    if not _finite(want):   # the spec overflows (log of an underflowed sigmoid, ...): nothing to compare
        for o in oracles:
            out.skipped[o] = "the reference run is not finite"
        return out

    reference = None   # the optimised plan on the reference interpreter: what "fast" is compared with
    if "optimize" in oracles or "fast" in oracles:
        try:
            reference = run(Executor(plan, dtype=np.float64, options=REFERENCE), params, batch, seeds)
            if "optimize" in oracles:
                compare("optimize", reference, want, base, batch, out)
        except Exception as e:
            _crash("optimize", out, e)
    fast = Executor(plan, dtype=np.float64)
    first = None
    if "fast" in oracles or "repeat" in oracles:
        try:
            first = run(fast, params, batch, seeds)
            if "fast" in oracles:
                compare("fast", first, reference or want, base, batch, out)
        except Exception as e:
            _crash("fast", out, e)
            first = None
    if "repeat" in oracles and first is not None:
        try:
            check_repeat(fast, params, batch, seeds, first, base, seed, out)
        except Exception as e:
            _crash("repeat", out, e)
    if "training" in oracles:
        try:
            check_training(opt, params, batch, base, out)
        except Exception as e:
            _crash("training", out, e)
    if "fd" in oracles:
        try:
            check_fd(ref_raw, params, batch, seeds, want, seed, out)
        except Exception as e:
            _crash("fd", out, e)
    if "batch" in oracles:
        if batch.lengths is None and batch.batch == 1:
            out.skipped["batch"] = "one example"
        else:
            try:
                check_batch(ref_raw, params, batch, seeds, want, out)
            except Exception as e:
                _crash("batch", out, e)
    if "torch" in oracles:
        check_torch(opt, ref_raw, params, batch, seeds, out)
    if "segments" in oracles:
        try:
            check_segments(plan, params, batch, seeds, base, out)
        except Exception as e:
            _crash("segments", out, e)
    if "fused" in oracles:
        try:
            check_fused(opt, params, batch, seeds, reference or want, base, out)
        except Exception as e:
            _crash("fused", out, e)
    if "plain" in oracles:
        try:
            check_plain(opt, params, batch, seeds, base, out)
        except Exception as e:
            _crash("plain", out, e)
    if "decode" in oracles:
        if opt.decoder is None:
            out.skipped["decode"] = "no decode declaration"
        else:
            try:
                check_decode(opt, raw, params, batch, out)
            except Exception as e:
                _crash("decode", out, e)
    return out


def _no_loop_kernels(oracle: str, plan, out: Outcome) -> bool:
    """True (and the oracle marked skipped, saying why) when no loop kernel can be compiled: numba is
    missing or the plan has no loop."""
    from nnspec.runtime.kernelcache import numba_available

    if not numba_available():
        out.skipped[oracle] = "numba is not installed"
    elif not any(isinstance(s, LoopStep) for s in plan.steps):
        out.skipped[oracle] = "no loop"
    else:
        return False
    return True


def _float32(params, batch: Batch, seeds) -> tuple[dict, Batch, dict]:
    """The parameters, the batch's float feeds and the seeds in float32 (for the float32 kernels' oracles)."""
    feeds = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in batch.feeds.items()}
    return ({k: v.astype(np.float32) for k, v in params.items()}, dataclasses.replace(batch, feeds=feeds),
            {k: v.astype(np.float32) for k, v in seeds.items()})


def check_segments(plan, params, batch: Batch, seeds, base, out: Outcome) -> None:
    """float32, the NumPy loop path with fused segments from the first pass against without."""
    if _no_loop_kernels("segments", plan, out):
        return
    f32, batch32, seeds32 = _float32(params, batch, seeds)
    runs = []
    for on in (True, False):
        ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False, fused_segments=on))
        if ex.segments_after is not None:
            ex.segments_after = 0
        runs.append(run(ex, f32, batch32, seeds32))
        if on and not any(loop._run is not None and (loop._run.segments or loop._run.backward and
                                                      loop._run.backward.segments) for loop in ex.fast_loops.values()):
            out.skipped["segments"] = "no segment"
            return
    compare("segments", runs[0], runs[1], base, batch, out)


def check_plain(compiled, params, batch: Batch, seeds, base, out: Outcome) -> None:
    """float32, the plain steps' compiled kernels from the first pass against the NumPy path: three
    passes of the objective, three single-use training passes of a model (spent inputs, lent arrays),
    steps of every size (``plainkernels.MIN_SIZE`` 0)."""
    from nnspec.runtime import plainkernels

    size, plainkernels.MIN_SIZE = plainkernels.MIN_SIZE, 0
    try:
        _check_plain(compiled, params, batch, seeds, base, out)
    finally:
        plainkernels.MIN_SIZE = size


def _check_plain(compiled, params, batch: Batch, seeds, base, out: Outcome) -> None:
    from nnspec.model import Model
    from nnspec.runtime import plainkernels
    from nnspec.runtime.kernelcache import numba_available

    if not numba_available():
        out.skipped["plain"] = "numba is not installed"
        return
    plan = compiled.plan
    f32, batch32, seeds32 = _float32(params, batch, seeds)
    runs: list[list[Run]] = []
    for on in (True, False):
        ex = Executor(plan, dtype=np.float32)
        if ex.plain_kernels_after is None:
            out.skipped["plain"] = "plain kernels are off"
            return
        ex.plain_kernels_after = 0 if on else None
        got = [run(ex, f32, batch32, seeds32) for _ in range(3)]
        if on and not ((ex._pass_run is not None and ex._pass_run.vjps)
                       or any(plainkernels.is_softmax_xent(REGISTRY[s.op]) for s in plan.steps if not isinstance(s, LoopStep))):
            out.skipped["plain"] = "no plain step with a kernel"
            return
        if plan.loss is not None:
            model = Model(compiled, {k: v.copy() for k, v in f32.items()}, dtype=np.float32)
            model.executor.plain_kernels_after = 0 if on else None
            got += [_train_pass(model.executor, model.params, batch32, True) for _ in range(3)]
        runs.append(got)
    for i, (a, b) in enumerate(zip(*runs)):
        compare("plain", a, b, base, batch, out, f"pass {i + 1}: ")


def check_fused(compiled, params, batch: Batch, seeds, want: Run, base, out: Outcome) -> None:
    """The loops the runtime fuses as compiled kernels from the first pass (float64): two passes of the
    objective against the reference engine's run, and (specs with a loss) three single-use training
    passes of a model (flat parameters: the gates' stacked gradient written by the kernel's edge into
    the flat gradients) against the reference's."""
    plan = compiled.plan
    if _no_loop_kernels("fused", plan, out):
        return
    ex = Executor(plan, dtype=np.float64)
    if ex.fused is None:
        out.skipped["fused"] = "fused loops are off"
        return
    ex.fused.after = 0
    first = run(ex, params, batch, seeds)
    if not ex.fused.last:
        out.skipped["fused"] = "no loop fused"
        return
    compare("fused", first, want, base, batch, out, "pass 1: ")
    compare("fused", run(ex, params, batch, seeds), want, base, batch, out, "pass 2: ")
    if plan.loss is None:
        return
    trained = _train_pass(Executor(plan, dtype=np.float64, options=REFERENCE), params, batch, False)
    model = _model(compiled, params)
    model.executor.fused.after = 0
    for i in (1, 2, 3):
        compare("fused", _train_pass(model.executor, model.params, batch, True), trained, base, batch, out,
                f"a model's single-use pass {i}: ")


def check_repeat(fast: Executor, params, batch: Batch, seeds, first: Run, plan, seed: int, out: Outcome) -> None:
    """Passes 2 and 3 on the same geometry, a pass on another, then the first geometry again."""
    for i in (2, 3):
        compare("repeat", run(fast, params, batch, seeds), first, plan, batch, out, f"pass {i}: ")
    T = batch.steps
    other = make_batch(plan, seed + 1, T=max(T, 1) + (1 if T else 0) if T else None, B=max(1, batch.batch))
    other_seeds = output_seeds(plan, Executor(plan, dtype=np.float64, options=REFERENCE).forward(
        params, other.feeds, lengths=other.run_lengths).values, other, seed + 1)
    run(fast, params, other, other_seeds)
    compare("repeat", run(fast, params, batch, seeds), first, plan, batch, out, "after another geometry: ")


def check_training(compiled, params, batch: Batch, base, out: Outcome) -> None:
    """Three single-use passes of a model's runtime, as the trainer makes them (``Model.loss_and_grads``:
    the loss's gradient for the parameters only; the model's dense parameters views of one flat array,
    their gradients views of another, ``runtime/paramblocks.py``), and three of an executor given the
    parameters as a plain dict, against the reference interpreter's."""
    plan = compiled.plan
    if plan.loss is None:
        out.skipped["training"] = "no loss"
        return
    want = _train_pass(Executor(plan, dtype=np.float64, options=REFERENCE), params, batch, False)
    model = _model(compiled, params)
    # the model's (flat parameters) and an executor's given a plain dict (its leaves' gradients in
    # arrays of the pool or spare ones)
    for how, ex, ps in (("model", model.executor, model.params), ("executor", Executor(plan, dtype=np.float64), params)):
        for i in (1, 2, 3):
            compare("training", _train_pass(ex, ps, batch, True), want, base, batch, out,
                    f"{how}'s single-use pass {i}: ")


def _model(compiled, params):
    from nnspec.model import Model
    return Model(compiled, {k: np.array(v, dtype=np.float64) for k, v in params.items()}, dtype=np.float64)


def _train_pass(ex: Executor, params, batch: Batch, single_use: bool) -> Run:
    """A training pass: the loss and its gradients for the parameters only."""
    plan = ex.plan
    leaves = [p.name for p in plan.params]
    tape = ex.forward(params, batch.feeds, lengths=batch.run_lengths, single_use=single_use)
    loss = np.array(tape.values[plan.loss], copy=True)
    grads = ex.backward(tape, wrt=leaves)
    return Run({"<loss>": loss}, {k: np.array(grads[k], copy=True) if k in grads else np.zeros_like(params[k])
                                  for k in leaves})


def check_fd(ex: Executor, params, batch: Batch, seeds, want: Run, seed: int, out: Outcome, eps=1e-6) -> None:
    """Central differences of the objective along a random unit direction through every parameter
    and every real input at once, against the runtime's gradient projected on it; when they differ,
    along one direction per parameter and input, to name the one whose gradient is wrong.

    The error is relative to the largest gradient. A wrong gradient of any element shows up
    (a random direction is orthogonal to an error with probability 0), at the cost of two passes
    instead of two per element."""
    rng = np.random.default_rng(seed + 13)
    scale = max([np.abs(g).max() for g in want.grads.values() if g.size] + [1e-3])
    seq_inputs = {i.name for i in ex.plan.inputs if i.seq}
    directions = {}
    for name, g in sorted(want.grads.items()):
        v = rng.normal(size=(params[name] if name in params else batch.feeds[name]).shape)
        if name not in params and batch.lengths is not None and name in seq_inputs:
            axis = _input_axis(ex.plan, name)
            if axis in batch.other_axes:
                ls = batch.other_axes[axis]
                v = v * _real(Batch({}, ls, v.shape[0], batch.batch), v.ndim)
            else:
                v = v * _real(batch, v.ndim)   # padding is not an input anyone can change
        directions[name] = v

    def error(names: list[str]) -> tuple[float, str]:
        """The error at eps; when that is too big, the best of other steps too: a saturated sigmoid
        under bce (1 - p cancels) makes differences noisy at one step, a wrong gradient at every step."""
        best = (math.inf, "")
        for h in (eps, 1e-5, 1e-7, 1e-4):
            best = min(best, error_at(names, h))
            if best[0] <= TOLERANCE:
                break
        return best

    def error_at(names: list[str], eps: float) -> tuple[float, str]:
        norm = math.sqrt(sum(float(np.sum(directions[n] ** 2)) for n in names))
        if norm == 0:
            return 0.0, ""

        def at(delta):
            p = {**params, **{n: params[n] + delta * directions[n] / norm for n in names if n in params}}
            feeds = {**batch.feeds, **{n: batch.feeds[n] + delta * directions[n] / norm for n in names
                                      if n not in params}}
            return objective(ex, p, Batch(feeds, batch.lengths, batch.steps, batch.batch, batch.other_axes), seeds)

        numeric = (at(eps) - at(-eps)) / (2 * eps)
        analytic = sum(float(np.sum(want.grads[n].reshape(directions[n].shape) * directions[n])) for n in names) / norm
        return abs(numeric - analytic) / scale, f"numeric {numeric:.9g}, runtime {analytic:.9g}"

    names = list(directions)
    worst, where = error(names)
    if not worst <= TOLERANCE:
        for n in names:
            e, detail = error([n])
            if not e <= TOLERANCE:
                where = f"d/d{n} along a random direction: {detail}"
                break
        else:
            where = f"along a random direction through every parameter and input: {where}"
    note(out, "fd", worst, where)


def check_batch(ex: Executor, params, batch: Batch, seeds, want: Run, out: Outcome) -> None:
    """The batch against each example alone; the loss terms weighted as the batch averages them."""
    plan = ex.plan
    seq = _seq_ids(plan)
    terms = [s for s in plan.steps if not isinstance(s, LoopStep) and s.op in LOSS_OPS]
    grads = want.tape_grads
    coeff = {}
    for s in terms:
        c = np.asarray(grads.get(s.id, 0.0))
        if c.size != 1:
            out.failures.append(Failure("batch", f"the loss is not one number: the gradient reaching "
                                                 f"{s.op} has shape {c.shape}"))
            out.errors["batch"] = math.inf
            return
        coeff[s.id] = float(c.reshape(-1)[0])
    if plan.loss is not None and np.asarray(want.values["<loss>"]).size != 1:
        out.failures.append(Failure("batch", f"the loss has shape {np.shape(want.values['<loss>'])}, not one number"))
        out.errors["batch"] = math.inf
        return
    B = batch.batch
    lengths = batch.lengths if batch.lengths is not None else np.ones(B, dtype=np.int64)
    axes = plan_axes(plan)

    def positions(name: str, i: int) -> int:
        """Example i's real positions of a value (over all its axes)."""
        return int(np.prod([_axis_lengths(batch, a)[i] for a in axes.get(name, ())]))
    loss_sum = 0.0
    grad_sum = {k: np.zeros_like(g) for k, g in want.grads.items() if k in params}
    worst, where = 0.0, ""
    for i in range(B):
        n = int(lengths[i])
        feeds = {}
        nested = {v.name: v.axes[-1] for v in plan.inputs if v.nested}
        for k, a in batch.feeds.items():
            if k in nested:   # example i's words are the columns i, i + B, ...: alone, its own characters
                counts = batch.other_axes[nested[k]][i::B][:n]
                feeds[k] = a[:max(int(counts.max()), 1), i::B][:, :n]
                continue
            feeds[k] = a[:batch.length(plan, k, i, n), i:i + 1] if k in seq else a[i:i + 1]
        alone = Batch(feeds, np.array([n]) if batch.lengths is not None else None, n if batch.lengths is not None
                      else 0, 1, {a: (ls[i::B][:n] if a in nested.values() else ls[i:i + 1])
                                  for a, ls in batch.other_axes.items()})
        s = {o: _example(plan, batch, o, g, i, seq) for o, g in seeds.items()}
        tape = ex.forward(params, feeds, lengths=alone.run_lengths)
        for t in terms:
            pred = t.inputs[0][0]
            w = positions(pred, i) / sum(positions(pred, j) for j in range(B)) if pred in seq else 1.0 / B
            s[t.id] = np.full_like(tape.values[t.id], coeff[t.id] * w)
            loss_sum += coeff[t.id] * w * float(np.sum(tape.values[t.id]))
        for o in plan.outputs:
            got = tape.values[o]
            ref = _example(plan, batch, o, want.values[o], i, seq)
            e = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1.0))
            if not e <= worst:
                worst, where = e, f"output {o} of example {i}"
        g = ex.backward(tape, seeds=s)
        for k in grad_sum:
            if k in g:
                grad_sum[k] += g[k]
        for v in plan.inputs:
            if v.integer:
                continue
            nv = batch.length(plan, v.name, i, n)
            ref = want.grads[v.name][:nv, i:i + 1] if v.seq else want.grads[v.name][i:i + 1]
            got = g.get(v.name, np.zeros_like(ref))
            scale = max([np.abs(x).max() for x in want.grads.values() if x.size] + [1e-3])
            e = float(np.abs(got - ref).max() / scale)
            if not e <= worst:
                worst, where = e, f"gradient of input {v.name} of example {i}"
            if v.seq and nv < want.grads[v.name].shape[0]:
                pad = want.grads[v.name][nv:, i]
                e = float(np.abs(pad).max() / scale)
                if not e <= worst:
                    worst, where = e, f"gradient of input {v.name} at padding of example {i}"
    if plan.loss is not None:
        ref = float(np.sum(want.values["<loss>"]))
        e = abs(loss_sum - ref) / max(abs(ref), 1.0)
        if not e <= worst:
            worst, where = e, f"loss: batch {ref:.9g}, examples alone {loss_sum:.9g}"
    scale = max([np.abs(x).max() for x in want.grads.values() if x.size] + [1e-3])
    for k, gs in grad_sum.items():
        e = float(np.abs(gs - want.grads[k]).max() / scale)
        if not e <= worst:
            worst, where = e, f"gradient of {k}: batch against the sum over examples alone"
    note(out, "batch", worst, where)


def check_torch(compiled, ex: Executor, params, batch: Batch, seeds, out: Outcome) -> None:
    """PyTorch on the expanded equations: outputs, the loss and its gradients (of the outputs'
    objective when there is no loss)."""
    if torch_run is None:
        out.skipped["torch"] = "tests/difftest/torch_oracle.py or torch is missing"
        return
    plan = ex.plan
    try:
        kwargs = {}
        if plan.loss is None and "seeds" in inspect.signature(torch_run).parameters:
            kwargs["seeds"] = seeds
        result = torch_run(compiled, params, batch.feeds, batch.run_lengths, **kwargs)
    except Exception as e:
        if type(e).__name__ == "Untranslatable":
            out.skipped["torch"] = f"untranslatable: {getattr(e, 'construct', e)}"
            return
        _crash("torch", out, e)
        return
    try:
        tape = ex.forward(params, batch.feeds, lengths=batch.run_lengths)
        values = {o: np.array(tape.values[o]) for o in plan.outputs}
        s = dict(seeds) if plan.loss is None else {plan.loss: np.ones_like(tape.values[plan.loss])}
        grads = ex.backward(tape, seeds=s)
        if plan.loss is not None:
            loss = np.asarray(tape.values[plan.loss])
            if loss.size != 1:
                out.failures.append(Failure("torch", f"the loss has shape {loss.shape}, not one number"))
                out.errors["torch"] = math.inf
                return
            if result.loss is None:
                out.failures.append(Failure("torch", "the oracle computed no loss"))
                out.errors["torch"] = math.inf
                return
            values["<loss>"] = loss.reshape(())
        leaves = set(params) | {v.name for v in plan.inputs if not v.integer}
        want = Run(values, {k: np.asarray(grads[k]) if k in grads else np.zeros_like(
            params[k] if k in params else batch.feeds[k], dtype=float) for k in leaves})
        got_values = {k: np.asarray(v) for k, v in result.outputs.items()}
        if plan.loss is not None:
            got_values["<loss>"] = np.asarray(result.loss, dtype=float).reshape(())
        got = Run(got_values, {k: np.asarray(result.grads[k]).reshape(w.shape) if k in result.grads
                               and np.size(result.grads[k]) == w.size else np.zeros_like(w)
                               for k, w in want.grads.items()})
        compare("torch", got, want, plan, batch, out)
    except Exception as e:
        _crash("torch", out, e)


# ---- decoding -------------------------------------------------------------------------------------

DECODE_START, DECODE_END = 2, 3     # the symbols' ids in a decoded vocabulary (0 <pad>, 1 <unk>)
NEVER_WRITTEN = (0, 1)              # <pad>, <unk> (and the start symbol): decoding never writes them


def check_decode(compiled, raw, params, batch: Batch, out: Outcome) -> None:
    """nnspec's greedy decoding and beam 1 against greedy decoding written out here: per example,
    each step one full forward pass fed the start symbol, the tokens so far and one more step; the
    score of every ended sequence of greedy and of beam 3 against nnspec.decode.sequence_score's (a
    pass per token, fed the whole prefix); beam 3's sequences best first by log p over GNMT's length
    penalty ((5 + n) / 6) ** alpha of their n scored tokens, none twice."""
    from nnspec.decode import DEFAULT_LENGTH_PENALTY, beam_search, greedy, sequence_score
    from nnspec.model import Model
    decoder = compiled.decoder
    start = DECODE_START if decoder.start is not None else None
    plan = compiled.plan
    feeds = {v.name: batch.feeds[v.name] for v in plan.inputs if v.name != decoder.input}
    lengths = {a: ls for a, ls in batch.other_axes.items()}
    model = Model(compiled, {k: np.array(v) for k, v in params.items()}, dtype=np.float64)
    got = greedy(model, feeds, lengths or None, start=start, end=DECODE_END)
    beams = beam_search(model, feeds, lengths or None, beam=1, start=start, end=DECODE_END)
    wide = beam_search(model, feeds, lengths or None, beam=3, start=start, end=DECODE_END)
    kind = _prediction_kind(compiled, decoder)
    worst, where = 0.0, ""
    for b in range(batch.batch):
        tokens, score, ended = _greedy_alone(compiled, raw, params, batch, b, decoder, start, kind)
        for what, h in (("greedy", got[b]), ("beam 1", beams[b][0])):
            if (h.tokens, h.ended) != (tokens, ended):
                out.failures.append(Failure("decode", f"{what} of example {b}: {h.tokens} (ended {h.ended}), "
                                                      f"one step at a time: {tokens} (ended {ended})"))
                out.errors["decode"] = math.inf
                return
            e = abs(h.score - score) / max(abs(score), 1.0)
            if not e <= worst:
                worst, where = e, f"{what} score of example {b}: {h.score!r}, one step at a time {score!r}"
        alone = {k: v[:, b:b + 1] if any(i.name == k and i.seq for i in plan.inputs) else v[b:b + 1]
                 for k, v in feeds.items()}
        alone_lengths = {a: ls[b:b + 1] for a, ls in lengths.items()} or None
        ended_ones = ([("greedy", tokens, score)] if ended else []) + [
            (f"beam 3's hypothesis {j}", h.tokens, h.score) for j, h in enumerate(wide[b]) if h.ended]
        for what, ts, sc in ended_ones:        # rescored by one pass per token, fed the whole prefix
            again = sequence_score(model, alone, ts, alone_lengths, start=start, end=DECODE_END)
            e = abs(again - sc) / max(abs(sc), 1.0)
            if not e <= worst:
                worst, where = e, f"{what} of example {b}: score {sc!r}, sequence_score {again!r}"
        scores = [h.score / ((5 + len(h.tokens) + h.ended) / 6) ** DEFAULT_LENGTH_PENALTY for h in wide[b]]
        if scores != sorted(scores, reverse=True) or len({tuple(h.tokens) for h in wide[b]}) != len(scores):
            out.failures.append(Failure("decode", f"beam 3 of example {b}: not best first, or a sequence twice: "
                                                  f"{[(h.tokens, h.score) for h in wide[b]]}"))
            out.errors["decode"] = math.inf
            return
    note(out, "decode", worst, where)


def _prediction_kind(compiled, decoder) -> str:
    """What the decoded prediction holds, from the class loss that compares it with the input."""
    for loss in compiled.flat.losses:
        e = loss.value
        names = [getattr(a, "name", None) for a in getattr(e, "args", [])]
        if getattr(e, "func", None) in REGISTRY and names == [decoder.prediction, decoder.input]:
            return REGISTRY[e.func].prediction
    raise AssertionError(f"no loss compares {decoder.prediction} with {decoder.input}")


def _greedy_alone(compiled, raw, params, batch: Batch, b: int, decoder, start, kind):
    """Example b decoded alone: (tokens, score, ended)."""
    plan = compiled.plan
    feeds, lengths = {}, {}
    for v in plan.inputs:
        if v.name == decoder.input:
            continue
        a = batch.feeds[v.name]
        if v.seq:
            axis = _input_axis(plan, v.name)
            n = int(batch.other_axes[axis][b]) if axis in batch.other_axes else int(batch.lengths[b])
            feeds[v.name], lengths[axis] = a[:n, b:b + 1], np.array([n])
        else:
            feeds[v.name] = a[b:b + 1]
    written, score = [], 0.0
    for _ in range(decoder.max_length):
        fed = np.array(([start] if start is not None else []) + written + [0], dtype=np.int64).reshape(-1, 1)
        run_lengths = {**lengths, decoder.axis: np.array([fed.shape[0]])}
        if torch_run is not None:
            p = torch_run(compiled, params, {**feeds, decoder.input: fed}, run_lengths).outputs[decoder.prediction]
        else:
            tape = Executor(raw.plan, dtype=np.float64, options=REFERENCE).forward(
                params, {**feeds, decoder.input: fed}, lengths=run_lengths)
            p = tape.values[decoder.prediction]
        row = np.asarray(p, dtype=np.float64)[-1, 0]
        if kind == "probabilities":
            with np.errstate(divide="ignore"):
                log_p = np.log(row)
        elif kind == "logits":
            log_p = row - row.max() - np.log(np.exp(row - row.max()).sum())
        else:
            log_p = row.copy()
        log_p[list(NEVER_WRITTEN) + ([start] if start is not None else [])] = -np.inf
        token = int(np.argmax(log_p))
        score += float(log_p[token])
        if token == DECODE_END:
            return written, score, True
        written.append(token)
    return written, score, False
