"""Spec text, mutated and random, through every command: check, expand, graph and run.

Each case is a spec file run by ``nnspec.cli.main`` as ``check``, ``expand``, ``graph`` and
``run`` (tiny settings: one epoch of at most 16 examples), in a worker process limited to
``MEMORY`` bytes of address space, with ``TIME_LIMIT`` seconds per command. The only allowed
outcomes are success and the project's own errors (SpecError, DataError, TrainingError,
CheckpointError, RuntimeFailure, UsageError: ``main`` renders them and returns 1). Anything
else is a crash: another exception out of ``main``, a MemoryError (something allocated
without bound), a command over the time limit, a worker that died, or an internal node id
(``y#1``) in what a user reads on stderr.

    python -m tests.fuzz_text --count 20000 [--seed 0] [--jobs 2]

prints the number of cases and commands by outcome, and every crash with the smallest input
that showed it. Known crashes (reported, being fixed on other branches) are in ``KNOWN`` with
their minimal inputs; a crash matching one of them is counted apart, not as new.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import multiprocessing as mp
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT = 10.0                 # seconds per command
MEMORY = 2 * 1024 ** 3            # bytes of address space per worker
COMMANDS = ("check", "expand", "graph", "run")
INTERNAL_ID = re.compile(r"[\w.]+#\d+")


# ---- known crashes: (name, minimal input, outcome) --------------------------------------------
# The outcome is what ``run_case`` reports for the command: "crash <Type> <nnspec file>",
# "memory", "timeout" or "internal id". Each is reported to the lead; fixes are on other branches.

@dataclass(frozen=True)
class Known:
    name: str
    text: str         # the minimal input
    outcome: str      # a regular expression over the outcome it gives (some command's)
    marker: str = ""  # a regular expression a case's text must contain for this to excuse its crash
    command: str = "run"   # a command that shows it (tests run just that one)


HUGE = r"\d{8,}|\de\d"
DELAY = r"\[t[-+]\d+\]"
LOSS_ARITHMETIC = r"\bloss [^\n]*[-+*/]|\bloss\b[\s\S]*\n\s*loss\b"


KNOWN = [
    Known("split parts over 100%", "input x[2]\noutput y\ny[2] = W @ x\nloss mse(y, x)\n"
          "train { split dev = 60%, test = 50% }\ndata inline { x = [[1, 2], [3, 4]] }\n",
          r"crash ValueError nnspec/data/split\.py", r"split"),
    Known("train block without a loss", "input x[2]\noutput y\ny[2] = W @ x\ntrain { }\n"
          "data inline { x = [[1, 2], [3, 4]] }\n", r"crash ValueError nnspec/runtime(/\w+)?\.py: this network has no loss",
          r"train"),
    Known("huge delay", "input x[2] : seq\noutput h\nh[2] = tanh(W @ x + U @ h[t-9999999999999999999])\n"
          "data inline { x = [[[1, 2]]] }\n", r"crash ValueError nnspec/runtime(/\w+)?\.py: Maximum allowed dimension", HUGE),
    Known("huge shift", "input w : seq of token\noutput y\ny[2] = V @ embed(shift(w, 99999999999999999999), 2)\n"
          'data inline { w = ["a b"] }\n', r"crash OverflowError nnspec/ops/sequence\.py", HUGE),
    Known("huge class count", "input x[2]\ntarget y : class[99999999999999999999]\noutput p\np = softmax(W @ x)\n"
          "loss cross_entropy(p, y)\n", r"crash ValueError nnspec/train/init\.py: Maximum allowed dimension", HUGE,
          "check"),
    Known("negative init scale", "input x[2]\noutput y\ny[2] = W @ x\nparam W init uniform(scale = -1)\n",
          r"crash ValueError nnspec/train/init\.py: high - low < 0", "", "check"),
    # (under load, initialising the 1.6 GB weight can take longer than the time limit)
    Known("huge size", "input x[2]\noutput h\nh[100000000] = tanh(W @ x)\n", r"memory|timeout", HUGE, "check"),
    Known("huge class count, slow", "input x[2]\ntarget y : class[100000000]\noutput p\np = softmax(W @ x)\n"
          "loss cross_entropy(p, y)\n", r"memory|timeout", HUGE, "expand"),
    # a weighted loss is B copies of the loss on main (branch semantics): training cannot make it a float
    Known("weighted loss in training", "input x[2]\ntarget r[1]\noutput p\np = W @ x\nloss 0.5 * mse(p, r)\n"
          "train { epochs 1 }\ndata inline { x = [[1, 2]]; r = [[1]] }\n",
          r"crash TypeError nnspec/model\.py: only 0-dimensional arrays", LOSS_ARITHMETIC),
    # a value computed from a state read at [t+1] outside its loop is not marked a sequence (time
    # inference): its loss counts padding, and with one step the class loss crashes
    Known("state read at t+1 outside its loop, one step", "input x[2] : seq\ntarget y : seq of class[2]\n"
          "output p\nh[3] = tanh(W @ x + U @ h[t-1])\np = V @ h[t+1] + c\nloss nll(p, y)\n"
          "data inline { x = [[[0, 1]], [[2, 2]]]; y = [[0], [1]] }\n",
          r"crash ValueError nnspec/ops/losses\.py: `indices` and `arr`", DELAY),
    # a loop reading another loop's state at [t-1] (two coupled recurrences): broadcasting error
    # in both the fast path and the reference interpreter
    Known("state of another loop read inside a loop", "input x[2] : seq\noutput b\na[3] = W @ x + U @ a[t-1]\n"
          "b[3] = V @ a[t-1] + R @ b[t-1]\ndata inline { x = [[[1, 2], [3, 4]]] }\n",
          r"crash ValueError nnspec/(ops/elementwise|runtime(/\w+)?)\.py: (non-broadcastable output|could not broadcast)",
          DELAY),
    # a numerical failure names the sub-expression by its internal node id ('loss#1' produced NaN)
    Known("internal id in a NaN message", "input x[2]\ntarget y : class[2]\noutput p\np = W @ x\nloss nll(log(p), y)\n"
          "train { epochs 1 }\ndata inline { x = [[1, 2], [-1, 3]]; y = [0, 1] }\n",
          r"internal id: .*'[\w.]+#\d+' produced (NaN|an infinite value)"),
    # reading the data: a class count too big for an int, and a class count of zero
    Known("huge class count with data", "input x[2]\ntarget y : class[99999999999999999999]\noutput p\n"
          "p = softmax(W @ x)\nloss cross_entropy(p, y)\ndata inline { x = [[1, 2]]; y = [0] }\n",
          r"crash OverflowError nnspec/data/vocab\.py", HUGE, "check"),
    Known("zero classes", "input x[2]\ntarget y : class[0]\noutput p\np = softmax(W @ x)\nloss cross_entropy(p, y)\n"
          "data inline { x = [[1, 2]]; y = [0] }\n", r"crash ValidationError nnspec/dataset\.py", r"class\[0\]",
          "check"),
    # the loss declared as an output: training works, printing its outputs does not
    Known("the loss as an output", "input x[2]\ntarget r[1]\noutput loss\np = sigmoid(w @ x)\nloss bce(p, r)\n"
          "train { epochs 1 }\ndata inline { x = [[0, 0], [0, 1]]; r = [[0], [1]] }\n",
          r"crash TypeError nnspec/cli\.py: 'float' object is not iterable", r"output\s+loss"),
]


# ---- running one case ---------------------------------------------------------------------------

ALLOWED_EXIT = (0, 1)


def _argv(command: str, path: str, text: str) -> list[str]:
    if command == "check":
        return ["check", path]
    if command == "expand":
        return ["expand", path]
    if command == "graph":
        return ["graph", path]
    args = ["run", path, "--no-save", "--quiet", "--seed", "1"]
    if re.search(r"\btrain\b", text):
        args += ["--set", "epochs=1", "--set", "limit=16"]
    return args


def run_command(command: str, path: str, text: str) -> str:
    """One command in this process: "ok", "error" (the project's own) or what went wrong."""
    from nnspec.cli import main
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(_argv(command, path, text))
    except MemoryError:
        return "memory"
    except SystemExit as e:          # argparse: never for these argument lists
        return f"crash SystemExit {e.code}"
    except Exception as e:  # noqa: BLE001 -- the point of the fuzzer
        message = " ".join(str(e).split())[:100]
        return f"crash {type(e).__name__} {_raised_in(e)}: {message}"
    if code not in ALLOWED_EXIT:
        return f"exit {code}"
    # an id the spec's own text holds (a comment after a name: 'h#2') is the user's, shown back
    line = next((x for x in err.getvalue().splitlines()
                 if any(m.group() not in text for m in INTERNAL_ID.finditer(x))), None)
    if line is not None:
        return f"internal id: {line.strip()[:160]}"
    return "ok" if code == 0 else "error"


def _raised_in(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/nnspec/" in f.filename]
    return "nnspec/" + frames[-1].filename.rsplit("/nnspec/", 1)[1] if frames else "?"


def _worker(conn, memory: int, work: str) -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(work)                   # data files named by a spec are not found here: no corpus is read
    path = os.path.join(work, "fuzz.nn")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        command, text = msg
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        conn.send(run_command(command, path, text))


class Worker:
    """A subprocess running commands, restarted after a timeout or a death."""

    def __init__(self, memory: int = MEMORY):
        self.memory = memory
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["nnspec", "nnspec.cli.dispatch", "nnspec.train.loop"])
        self.proc = None
        self.work = tempfile.mkdtemp(prefix="nnspec-fuzz-")   # the worker's folder, removed by close()

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.memory, self.work), daemon=True)
        self.proc.start()
        child.close()

    def run(self, command: str, text: str, limit: float = TIME_LIMIT) -> str:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send((command, text))
            if self.conn.poll(limit):
                return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.stop()
            return "died"
        died = not self.proc.is_alive()
        self.stop()
        return "died" if died else "timeout"

    def stop(self):
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
            self.proc = None

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(None)
            self.proc.join(2)
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def run_case(worker: Worker, text: str, commands=COMMANDS) -> dict[str, str]:
    return {c: worker.run(c, text) for c in commands}


def is_allowed(outcome: str) -> bool:
    return outcome in ("ok", "error")


def known_match(outcome: str, text: str = "") -> Known | None:
    return next((k for k in KNOWN if re.match(k.outcome, outcome) and re.search(k.marker, text)), None)


def kind_of(outcome: str) -> str:
    """An outcome without its message, for counting."""
    return outcome.split(":", 1)[0]


def crash_key(outcome: str) -> str:
    """What tells two crashes apart: the outcome with its numbers blurred."""
    return re.sub(r"\d+", "N", outcome)[:90]


# ---- cases ---------------------------------------------------------------------------------------

# Small specs with inline data, so that `run` trains or runs forward on something.
WITH_DATA = [
    "input x[2]\ntarget y : class[2]\noutput p\nh[3] = tanh(W @ x + b)\np = softmax(V @ h + c)\n"
    "loss cross_entropy(p, y)\ntrain { optimizer sgd(lr = 0.1); batch 2; epochs 2 }\n"
    "data inline { x = [[0, 0], [0, 1], [1, 0], [1, 1]]; y = [0, 1, 1, 0] }\n",
    "input w : seq of token\ntarget y : seq of class\noutput p\ne = embed(w, 4)\nh = lstm(e, H = 3)\n"
    "p = softmax(V @ h + c)\nloss cross_entropy(p, y)\ntrain { batch 2; epochs 1; split dev = 25% }\n"
    'data inline { w = ["the dog barks", "a cat sleeps", "dogs bark", "the cat"]; '
    'y = [["D", "N", "V"], ["D", "N", "V"], ["N", "V"], ["D", "N"]] }\n',
    "input w : seq of char\noutput p\ne = embed(w, 3)\nh = gru(e, H = 3)\np = softmax(V @ h + c)\n"
    'loss cross_entropy(p, shift(w, 1))\ntrain { batch 2; epochs 1 }\ndata inline { w = ["abcab", "bca"] }\n',
    "input x[2] : seq\ntarget r[1] : seq\noutput y\nh = reverse(rnn)(x, H = 2)\ny = W @ h + b\n"
    "loss mse(y, r)\ntrain { batch 1; epochs 1; optimizer adam(lr = 0.01) }\n"
    "data inline { x = [[[1, 2], [3, 4]], [[0, 1]]]; r = [[[1], [0]], [[1]]] }\n",
    "input d : bag of token\ntarget y : class\noutput p\np = softmax(W @ d + b)\nloss cross_entropy(p, y)\n"
    'train { epochs 1; min_count 1 }\ndata inline { d = ["good film", "bad film", "good"]; y = [1, 0, 1] }\n',
    "input x[2]\noutput y\ny = W @ x\nparam W = [[1, 2], [3, 4]]\ndata inline { x = [[1, 0], [0, 1]] }\n",
    "input x[3] : seq\ntarget y : class[2]\noutput p\nh = bidirectional(gru)(x, H = 2)\n"
    "p = softmax(V @ concat(mean(h), max(h)) + c)\nloss cross_entropy(p, y)\ninitial h.fwd = h0\n"
    "train { epochs 1; batch 2; clip 1; dropout h = 0.5 }\n"
    "data inline { x = [[[1, 0, 0], [0, 1, 0]], [[0, 0, 1]], [[1, 1, 1], [0, 0, 0], [1, 0, 1]]]; y = [0, 1, 1] }\n",
]

# What a mutation may insert, beyond tests/test_fuzz_check.py's snippets: values at the edges.
EDGE_SNIPPETS = [
    "99999999999999999999", "1e308", "1e999", "0.0", "-0", "t-9999999999999999999", "[t-100000000]",
    "[100000000]", "class[99999999999999999999]", "init uniform(scale = -1)", "split dev = 60%, test = 50%",
    "bptt 0", "batch 1e9", "epochs 0", "limit 0", "clip -1", "lr -1", "dropout x = 1", "shift(w, 0)",
    "shift(x, -1)", "slice(x, start = 5)", "slice(x, 3, 1)", "pow(x, p = -1)", "embed(w, 1)", "max(x)",
    "x[t+1]", "h[t-2]", "initial h = 1", "initial x = [1, 2]", "loss 0.5 * ", "argmax(", "concat_rows(",
    "linear(", "word_dropout(", "data inline { x = [] }", "data inline { x = [[1], [2, 3]] }",
    'data csv("nofile.csv")', "train { }", "frozen", "output y[0]", "let H = 0\n", "let H = -1\n",
]


def _seeds():
    from tests.test_fuzz_check import SEEDS
    return list(SEEDS) + WITH_DATA


def _snippets():
    from tests.test_fuzz_check import SNIPPETS
    return list(SNIPPETS) + EDGE_SNIPPETS


def _vocabulary():
    from tests.test_fuzz_check import VOCABULARY
    return list(VOCABULARY)


TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][A-Za-z0-9_.]*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\[t[+-]\d+\]|->|\S')
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


KINDS = ("char", "token", "line", "rename", "insert", "insert", "number", "delay")
NUMBERS = ("0", "1", "2", "5", "64", "1e3", "100000000", "99999999999999999999", "1e400", "0.5")
DELAYS = ("[t-1]", "[t+1]", "[t-2]")
NEW_NAMES = ("x", "h", "y", "W", "q", "t", "w", "e", "p", "loss", "input", "lstm", "zz")


@dataclass
class Chooser:
    """Where a mutation's choices come from: a seeded ``random.Random`` here (``Chooser(rng.randint)``),
    Hypothesis's ``draw`` in tests/test_fuzz_check.py, so that both mutate text the same way."""
    integer: object                      # (lo, hi) -> an int in lo..hi, both included

    def pick(self, options):
        options = list(options)
        return options[self.integer(0, len(options) - 1)]


def mutate(text: str, choose: Chooser, snippets: list[str], edits: int, *, kinds=KINDS, numbers=NUMBERS,
           delays=DELAYS, new_name=None) -> str:
    """Characters, tokens and lines deleted, duplicated or swapped; names renamed; snippets inserted;
    numbers replaced (with edge values too); delays added or flipped."""
    for _ in range(edits):
        kind, action = choose.pick(kinds), choose.pick(["delete", "duplicate", "swap"])
        if kind == "char" and text:
            i = choose.integer(0, len(text) - 1)
            j = min(len(text), i + choose.integer(1, 3))
            if action == "delete":
                text = text[:i] + text[j:]
            elif action == "duplicate":
                text = text[:j] + text[i:j] + text[j:]
            elif j < len(text):
                text = text[:i] + text[j] + text[i + 1:j] + text[i] + text[j + 1:]
        elif kind == "token":
            toks = [m.span() for m in TOKEN.finditer(text)]
            if len(toks) < 2:
                continue
            a, b = sorted(choose.integer(0, len(toks) - 1) for _ in range(2))
            (i, j), (k, m) = toks[a], toks[b]
            if action == "delete":
                text = text[:i] + text[j:]
            elif action == "duplicate":
                text = text[:j] + " " + text[i:j] + text[j:]
            elif a != b:
                text = text[:i] + text[k:m] + text[j:k] + text[i:j] + text[m:]
        elif kind == "line":
            lines = text.split("\n")
            i, j = choose.integer(0, len(lines) - 1), choose.integer(0, len(lines) - 1)
            if action == "delete":
                del lines[i]
            elif action == "duplicate":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif kind == "rename":
            names = sorted(set(NAME.findall(text)))
            if names:
                old = choose.pick(names)
                new = new_name() if new_name else choose.pick(NEW_NAMES)
                text = re.sub(rf"\b{re.escape(old)}\b", new, text, count=choose.integer(0, 2))
        elif kind == "number":    # a different size, count or constant: still valid syntax
            spans = [m.span() for m in re.finditer(r"\b\d+\b", text)]
            if spans:
                i, j = choose.pick(spans)
                text = text[:i] + choose.pick(numbers) + text[j:]
        elif kind == "delay":     # read a name at another step, or flip the direction of a delay
            spans = [m.span() for m in re.finditer(r"\b[A-Za-z_]\w*\b(?!\s*[(=\[])|\[t[+-]", text)]
            if spans:
                i, j = choose.pick(spans)
                flipped = {"[t-": "[t+", "[t+": "[t-"}
                text = text[:i] + (flipped[text[i:j]] if text[i:j] in flipped
                                   else text[i:j] + choose.pick(delays)) + text[j:]
        else:
            i = choose.integer(0, len(text))
            text = text[:i] + choose.pick(snippets) + text[i:]
    return text


def layered(rng: random.Random) -> str:
    """A right network with inline data that fits it: layers, recurrences, cells, reductions."""
    sequence = rng.random() < 0.6
    tokens = sequence and rng.random() < 0.5
    n = rng.randint(1, 3)
    lines = ["let M = 3", "input w : seq of token" if tokens else f"input x[{n}]" + " : seq" * sequence]
    previous = "x"
    if tokens:
        lines.append(f"e = embed(w, {rng.randint(1, 3)})")
        previous = "e"
    for i in range(1, rng.randint(1, 3) + 1):
        size = rng.choice(["2", "3", "M"])
        act = rng.choice(["tanh", "relu", "sigmoid", "softplus", "gelu", "elu", "leaky_relu", "hard_tanh"])
        kind = rng.choice(["dense", "recurrent", "cell", "concat", "scaled", "t-2"] if sequence
                          else ["dense", "concat", "scaled", "dense cell"])
        if kind == "dense":
            lines.append(f"h{i}[{size}] = {act}(W{i} @ {previous} + b{i})")
        elif kind == "recurrent":
            lines.append(f"h{i}[{size}] = {act}(W{i} @ {previous} + U{i} @ h{i}[t{rng.choice('-+')}1] + b{i})")
        elif kind == "t-2":
            lines.append(f"h{i}[{size}] = tanh(W{i} @ {previous} + U{i} @ h{i}[t-2])")
            if rng.random() < 0.5:
                lines.append(f"initial h{i} = s{i}")
        elif kind == "cell":
            cell = rng.choice(["lstm", "gru", "rnn", "reverse(lstm)", "bidirectional(gru)", "stacked(rnn, 2)",
                               "gru_reset_before"])
            lines.append(f"h{i} = {cell}({previous}, H = {rng.randint(1, 3)})")
        elif kind == "dense cell":
            lines.append(f"h{i} = dense({previous}, N = {rng.randint(1, 3)})")
        elif kind == "concat":
            lines.append(f"h{i} = concat({previous}, {previous})")
        else:
            lines.append(f"h{i} = 0.5 * {previous} - {previous} / 2")
        previous = f"h{i}"
    reduced = sequence and rng.random() < 0.5
    if reduced:
        previous = f"{rng.choice(['last', 'mean', 'max', 'first', 'sum'])}({previous})"
    k = rng.randint(2, 3)
    per_step = sequence and not reduced
    lines += ["output p", f"p = softmax(V @ {previous} + c)"]
    loss = rng.choice(["cross_entropy(p, y)", "cross_entropy(p, y)", "nll(log(p), y)", "0.5 * cross_entropy(p, y)"])
    lines += [f"target y : {'seq of ' if per_step else ''}class[{k}]", f"loss {loss}"]
    if tokens and per_step and rng.random() < 0.3:
        lines[-2:] = ["loss cross_entropy(p, shift(w, 1))"]
        lines[lines.index("output p") + 1] = f"p[{k}] = softmax(V @ {previous} + c)"
    lines.append("train { epochs 1; batch 2; optimizer " + rng.choice(["sgd(lr = 0.1)", "adam", "momentum"]) + " }")
    lines.append(_inline_data(rng, sequence, tokens, n, k, per_step, "y : " in "\n".join(lines)))
    return "\n".join(lines) + "\n"


def _inline_data(rng, sequence, tokens, n, k, per_step, has_target) -> str:
    words = ["a", "b", "c", "dd"]
    count = rng.randint(1, 4)
    lengths = [rng.randint(1, 4) for _ in range(count)]
    if tokens:
        x = "w = [" + ", ".join('"' + " ".join(rng.choice(words) for _ in range(L)) + '"' for L in lengths) + "]"
    elif sequence:
        x = "x = [" + ", ".join("[" + ", ".join("[" + ", ".join(str(rng.randint(-2, 2)) for _ in range(n)) + "]"
                                               for _ in range(L)) + "]" for L in lengths) + "]"
    else:
        x = "x = [" + ", ".join("[" + ", ".join(str(rng.randint(-2, 2)) for _ in range(n)) + "]"
                                for _ in range(count)) + "]"
    if not has_target:
        return f"data inline {{ {x} }}"
    if per_step:
        y = "y = [" + ", ".join("[" + ", ".join(str(rng.randrange(k)) for _ in range(L)) + "]" for L in lengths) + "]"
    else:
        y = "y = [" + ", ".join(str(rng.randrange(k)) for _ in range(count)) + "]"
    return f"data inline {{ {x}; {y} }}"


def case(i: int, seed: int = 0) -> str:
    """The i-th case of a run: mutations of the seeds and of random networks, and random tokens."""
    rng = random.Random(f"{seed}:{i}")
    kind = rng.random()
    if kind < 0.45:
        return mutate(rng.choice(_seeds()), Chooser(rng.randint), _snippets(), rng.randint(1, 4))
    if kind < 0.85:
        return mutate(layered(rng), Chooser(rng.randint), _snippets(), rng.choice([0, 0, 1, 1, 2]))
    return " ".join(rng.choice(_vocabulary() + EDGE_SNIPPETS[:12]) for _ in range(rng.randint(0, 40)))


# ---- minimising ----------------------------------------------------------------------------------

def minimise(worker: Worker, text: str, command: str, outcome: str, budget: float = 60.0) -> str:
    """Delete lines, then tokens within lines, while the command gives the same outcome (greedy)."""
    deadline = time.monotonic() + budget

    def same(lines: list[list[str]]) -> bool:
        return time.monotonic() < deadline and worker.run(command, render(lines)) == outcome

    def render(lines: list[list[str]]) -> str:
        return "".join(" ".join(tokens) + "\n" for tokens in lines)

    lines = [[m.group() for m in TOKEN.finditer(line)] for line in text.split("\n")]
    lines = [tokens for tokens in lines if tokens]
    if not same(lines):            # re-spacing the tokens changed the outcome: keep the text
        return text
    i = 0
    while i < len(lines):
        if same(lines[:i] + lines[i + 1:]):
            del lines[i]
        else:
            i += 1
    for i in range(len(lines)):
        j = 0
        while j < len(lines[i]):
            trial = [tokens if k != i else tokens[:j] + tokens[j + 1:] for k, tokens in enumerate(lines)]
            if same(trial):
                lines = trial
            else:
                j += 1
    return render(lines)


# ---- the command line ----------------------------------------------------------------------------

def fuzz(count: int, seed: int = 0, jobs: int = 1, commands=COMMANDS, progress=None, on_crash=None) -> dict:
    """Run ``count`` cases; counts by outcome, and the crashes (first input of each kind)."""
    from concurrent.futures import ThreadPoolExecutor
    workers = [Worker() for _ in range(max(1, jobs))]
    outcomes = collections.Counter()
    cases = collections.Counter()
    crashes: dict[tuple[str, str], str] = {}
    known: collections.Counter = collections.Counter()

    def one(w: Worker, i: int):
        text = case(i, seed)
        return text, run_case(w, text, commands)

    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            for start in range(0, count, len(workers)):
                ids = range(start, min(count, start + len(workers)))
                batch = [pool.submit(one, w, i) for w, i in zip(workers, ids)]
                for f in batch:
                    text, result = f.result()
                    worst = "ok"
                    for command, outcome in result.items():
                        outcomes[f"{command}: {kind_of(outcome)}"] += 1
                        if is_allowed(outcome):
                            if outcome == "error" and worst == "ok":
                                worst = "error"
                            continue
                        k = known_match(outcome, text)
                        if k is not None:
                            known[k.name] += 1
                            worst = "known crash" if worst in ("ok", "error") else worst
                        else:
                            if (command, crash_key(outcome)) not in crashes and on_crash:
                                on_crash(command, outcome, text)
                            crashes.setdefault((command, crash_key(outcome)), (outcome, text))
                            worst = "new crash"
                    cases[worst] += 1
                if progress:
                    progress(start + len(batch), cases)
    finally:
        for w in workers:
            w.close()
    return {"cases": cases, "outcomes": outcomes, "known": known, "crashes": crashes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (the machine's cores are shared)")
    p.add_argument("--minimise", action="store_true", help="shrink each new crash's input (slow)")
    args = p.parse_args(argv)
    t0 = time.monotonic()

    def progress(done, cases):
        if done % 500 < max(1, args.jobs):
            print(f"  {done} cases, {time.monotonic() - t0:.0f} s: {dict(cases)}", file=sys.stderr, flush=True)

    def on_crash(command, outcome, text):
        print(f"  new crash, {command}: {outcome}\n{text}", file=sys.stderr, flush=True)

    report = fuzz(args.count, args.seed, args.jobs, progress=progress, on_crash=on_crash)
    print(f"{args.count} cases in {time.monotonic() - t0:.0f} s")
    print("cases by worst outcome:")
    for k, v in report["cases"].most_common():
        print(f"  {v:7d}  {k}")
    print("commands by outcome:")
    for k, v in sorted(report["outcomes"].items()):
        print(f"  {v:7d}  {k}")
    if report["known"]:
        print("known crashes seen:")
        for k, v in report["known"].most_common():
            print(f"  {v:7d}  {k}")
    if report["crashes"]:
        print("NEW crashes (first input of each):")
        worker = Worker() if args.minimise else None
        for (command, _), (outcome, text) in report["crashes"].items():
            if worker is not None:
                text = minimise(worker, text, command, outcome)
            print(f"--- {command}: {outcome}\n{text}")
        if worker is not None:
            worker.close()
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
