"""nnspec's train step, for the benchmark harness.

Each config has a spec in ``bench/specs/<config>.nn``: the same network as the
NumPy and PyTorch implementations, written as a user would write it. Sizes the
data decides (``vocab(w)``, ``classes(y)``) are bound from the config; the
weights are ``configs.init_params`` moved into nnspec's names with
``nnspec.torch_weights.from_torch`` (PyTorch's two recurrent biases become their
sum, as nnspec keeps one bias per gate). A step is what ``nnspec run`` does for
one batch: ``Model.loss_and_grads`` (forward, backward; a single-use tape) and the SGD
optimiser of ``nnspec.train.optim`` (allowed to overwrite the gradients).

``NNSPEC_OPTIMIZE=0`` in the environment times the unoptimised plan instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.configs import init_params, make_batch

SPECS = Path(__file__).resolve().parent / "specs"


def spec_path(config) -> Path:
    return SPECS / f"{config.name}.nn"


def nnspec_params(config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """configs.init_params (PyTorch names and layouts) -> nnspec parameter names."""
    from nnspec.torch_weights import from_torch

    if config.kind == "mlp":
        return dict(params)
    instances = [["h.fwd", "h.bwd"]] if config.bidirectional else [["h"]]
    state = {}
    for sfx, theirs in [("", ""), ("_rev", "_reverse")][: config.directions]:
        for ours, name in [("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]:
            state[f"{name}_l0{theirs}"] = params[ours + sfx]
    cell = {"rnn": "rnn", "lstm": "lstm", "gru": "gru"}[config.cell]
    out = from_torch(state, cell, instances)
    out.update({"e.table": params["emb"], "W_out": params["W_out"], "b_out": params["b_out"]})
    return out


def build(config, dtype=np.float32, optimize: bool | None = None, options=None):
    """(model, feeds, optimizer) for one config, from the shared weights and batch; ``options``: the
    runtime's ``ExecOptions`` (default: all its fast paths)."""
    from nnspec import compile_file
    from nnspec.model import Model
    from nnspec.train.optim import make_optimizer

    path = spec_path(config)
    if not path.exists():
        raise NotImplementedError(f"no spec {path.name} in bench/specs")
    if optimize is None:
        optimize = os.environ.get("NNSPEC_OPTIMIZE", "1") != "0"
    bindings = {} if config.kind == "mlp" else {"vocab(w)": config.vocab, "classes(y)": config.classes}
    compiled = compile_file(path, bindings=bindings, optimize=optimize)
    params = {k: np.ascontiguousarray(v, dtype=dtype)
              for k, v in nnspec_params(config, init_params(config, dtype)).items()}
    want = {p.name: tuple(p.shape) for p in compiled.plan.params}
    have = {k: v.shape for k, v in params.items()}
    if want != have:
        raise ValueError(f"{path.name} does not match config {config.name}: spec wants {want}, "
                         f"config gives {have}")
    model = Model(compiled, params, dtype=dtype, options=options)
    x, y = make_batch(config, dtype)
    feeds = {"x": x, "y": y} if config.kind == "mlp" else {"w": x, "y": y}
    return model, feeds, make_optimizer("sgd", lr=config.lr)


class NnspecImpl:
    """harness.Implementation for nnspec: Model.loss_and_grads + the SGD optimiser."""

    name = "nnspec"
    traces_memory = True  # everything is NumPy
    fused = True          # small loops as compiled kernels where numba is installed (runtime/fused.py)
    fast_sigmoid = True   # float32 loop steps' sigmoid as a compiled kernel (runtime/fastact.py)
    segments = True       # float32 loop steps' elementwise runs as compiled kernels (runtime/segments.py)
    blocked = True        # loop steps' products by a weight in column blocks where BLAS runs those faster
    plain = True          # plain steps' activations and softmax cross-entropy as compiled kernels (runtime/plainkernels.py)

    def __init__(self, optimize: bool | None = None):
        self.optimize = optimize
        self.notes: dict[str, str] = {}   # config -> what ran (fused loops)

    def setup(self, config, dtype):
        from nnspec.runtime import ExecOptions

        # an A/B variant's model is made with its options, so its parameters are laid out as the default's
        options = (None if self.fused and self.fast_sigmoid and self.segments and self.blocked and self.plain else
                   ExecOptions(fused_loops=self.fused, fast_sigmoid=self.fast_sigmoid, fused_segments=self.segments,
                               blocked_products=self.blocked, plain_kernels=self.plain, fast_loss=self.plain))
        model, feeds, opt = build(config, dtype, self.optimize, options)
        rng = np.random.default_rng(0)
        fused = model.executor.fused
        if fused is not None:
            fused.after = 0    # the bench times steady steps: compile during the warm-up, not after 100 steps
        if model.executor.fast_sigmoid_after is not None:
            model.executor.fast_sigmoid_after = 0    # likewise the loop steps' float32 sigmoid kernel
        if model.executor.segments_after is not None:
            model.executor.segments_after = 0        # and the loop steps' fused segments
        if model.executor.plain_kernels_after is not None:
            model.executor.plain_kernels_after = 0   # and the plain steps' (activations, the softmax cross-entropy)

        def step():
            loss, grads, _ = model.loss_and_grads(feeds, rng=rng, single_use=True)
            opt.step(model.params, grads, consume=True)   # as the training loop does
            if config.name not in self.notes:
                loops = sum(1 for s in model.plan.steps if s.kind == "loop")   # (fast_loops: those on NumPy only)
                self.notes[config.name] = f"fused loops: {len(fused.last) if fused else 0} of {loops}"
            return loss

        return step

    def info(self) -> dict:
        import nnspec
        from nnspec.runtime.fused import numba_available

        opt = self.optimize if self.optimize is not None else os.environ.get("NNSPEC_OPTIMIZE", "1") != "0"
        return {"version": getattr(nnspec, "__version__", "?"), "optimize": opt,
                "fused": self.fused and numba_available()}


class NnspecNoFuseImpl(NnspecImpl):
    """nnspec with every loop on the NumPy path (``ExecOptions(fused_loops=False)``): the A/B of fusion."""

    name = "nnspec-nofuse"
    fused = False


class NnspecNumpySigmoidImpl(NnspecImpl):
    """nnspec with the loop steps' sigmoid by NumPy (``ExecOptions(fast_sigmoid=False)``): its A/B."""

    name = "nnspec-npsig"
    fast_sigmoid = False


class NnspecNoSegmentsImpl(NnspecImpl):
    """nnspec with each loop step's elementwise ops as NumPy calls (``ExecOptions(fused_segments=False)``):
    the A/B of the fused segments."""

    name = "nnspec-noseg"
    segments = False


class NnspecNoBlocksImpl(NnspecImpl):
    """nnspec with each loop step's product by a weight in one piece (``ExecOptions(blocked_products=False)``):
    the A/B of the column blocks."""

    name = "nnspec-noblock"
    blocked = False


class NnspecNoPlainKernelsImpl(NnspecImpl):
    """nnspec with the plain steps' activations and softmax cross-entropy by NumPy (their kernels never
    made, as ``ExecOptions(plain_kernels=False, fast_loss=False)``): the A/B of their compiled kernels."""

    name = "nnspec-noplain"
    plain = False
