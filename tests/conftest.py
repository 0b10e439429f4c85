"""Shared test helpers: finite differences over whole specs, and the slow marker."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.runtime import Executor


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run long trainings and benchmarks too")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def random_feeds(plan, T=5, B=3, seed=0, lengths=None):
    """Random inputs and targets for a plan: floats, token ids and class labels."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in plan.inputs + plan.targets:
        shape = ((T, B) if v.seq else (B,)) + tuple(v.shape)
        if v.integer:
            high = v.card if isinstance(v.card, int) else 3
            feeds[v.name] = rng.integers(0, high, size=shape)
        else:
            feeds[v.name] = rng.normal(size=shape)
    return feeds


def gradcheck_spec(text: str, bindings=None, T=5, B=3, lengths=(5, 3, 2), seed=0, eps=1e-6, seeds_of=None):
    """Largest relative error between reverse mode and central differences, over every parameter.

    The loss is the spec's loss, or sum(output * G) for a fixed random G when it has none.
    """
    plan = compile_text(text, bindings=bindings).plan
    ex = Executor(plan, dtype=np.float64)
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, T, B, seed)
    has_seq = any(v.seq for v in plan.inputs)
    lens = np.array(lengths) if has_seq and lengths is not None else None
    cotangent = {}

    def loss(p):
        tape = ex.forward(p, feeds, lengths=lens)
        if plan.loss is not None:
            return float(tape.values[plan.loss]), tape
        total = 0.0
        for o in plan.outputs:
            out = tape.values[o]
            if o not in cotangent:
                cotangent[o] = np.random.default_rng(seed + 1).normal(size=out.shape)
            total += float((out * cotangent[o]).sum())
        return total, tape

    _, tape = loss(params)
    grads = ex.backward(tape, seeds=None if plan.loss is not None else cotangent)
    worst = 0.0
    for name, p in params.items():
        numeric = np.zeros_like(p)
        flat = p.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up, _ = loss(params)
            flat[i] = old - eps
            down, _ = loss(params)
            flat[i] = old
            numeric.reshape(-1)[i] = (up - down) / (2 * eps)
        analytic = grads.get(name, np.zeros_like(p))
        scale = max(np.abs(numeric).max(), 1e-3)
        worst = max(worst, float(np.abs(numeric - analytic).max() / scale))
    return worst


def assert_model_gradients_match_finite_differences(model, feeds, samples: int = 2, seed: int = 0,
                                                    eps: float = 1e-6) -> None:
    """The gradient of a float64 ``model``'s loss on ``feeds`` at ``samples`` random entries of every
    parameter against central differences (rel 1e-5, abs 1e-9)."""
    _, grads, _ = model.loss_and_grads(feeds, train=False)
    rng = np.random.default_rng(seed)
    for name, w in model.params.items():
        for i in [tuple(rng.integers(0, n) for n in w.shape) for _ in range(samples)]:
            old = w[i]
            w[i] = old + eps
            up = float(model.loss_and_grads(feeds, train=False)[0])
            w[i] = old - eps
            down = float(model.loss_and_grads(feeds, train=False)[0])
            w[i] = old
            assert np.asarray(grads[name])[i] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9), \
                (name, i)


# ---- a tiny tagger trained for real, for the tests of trained models -------------------------------

TINY_SENTENCES = [[("the", "DET"), ("dog", "NOUN"), ("runs", "VERB")],
                  [("a", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")],
                  [("the", "DET"), ("cat", "NOUN"), ("runs", "VERB")], [("dogs", "NOUN"), ("sleep", "VERB")]]


def conllu(sentences) -> str:
    """Sentences of (word, tag) pairs as CoNLL-U text."""
    return "\n".join("".join(f"{i}\t{w}\t_\t{t}\t_\t_\t0\t_\t_\t_\n" for i, (w, t) in enumerate(s, 1))
                     for s in sentences) + "\n"


def train_tiny_tagger(root, spec_text: str):
    """``nnspec run`` on a spec reading train.conllu and dev.conllu made of TINY_SENTENCES, as a
    user would train one; the run directory it wrote."""
    from nnspec.cli import main
    (root / "tagger.nn").write_text(spec_text)
    (root / "train.conllu").write_text(conllu(TINY_SENTENCES * 4))
    (root / "dev.conllu").write_text(conllu(TINY_SENTENCES))
    assert main(["run", str(root / "tagger.nn"), "--runs", str(root / "runs"), "--quiet"]) == 0
    (run,) = (root / "runs").iterdir()
    return run


def run_cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    """``nnspec ARGV`` in this process with ``stdin`` as its standard input: (exit code, stdout, stderr)."""
    import contextlib
    import io
    import sys

    from nnspec.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()
