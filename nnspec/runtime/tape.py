"""What a pass runs with and what it leaves: the switches (``ExecOptions``), the run context
(``RunContext``: training or not, the random stream, NaN checks), the ``Tape``, and the error a
numerical failure raises (``RuntimeFailure``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import Sources, Span, render_message
from ..ops import Ctx
from .timeaxis import TimeAxis


class RuntimeFailure(Exception):
    """A numerical failure at run time (e.g. NaN), naming the value that produced it; ``span``:
    the source of its step, so that the failure renders as a spec error does (``render``)."""

    def __init__(self, message: str, node: str | None = None, span: Span | None = None,
                 sources: Sources | None = None):
        super().__init__(message)
        self.node, self.span, self.sources = node, span, sources

    def render(self, color: bool = False) -> str:
        """``spec.nn:4:8: error: ...``, the source line and a caret under the expression; without a
        span, ``error: ...``. The line comes from ``sources`` (the compiler's), else from the file."""
        return render_message("error", str(self), self.span, self.sources, color)


def check_finite(out: np.ndarray, node: str, span: Span | None = None) -> None:
    """Raise a ``RuntimeFailure`` naming ``node`` if ``out`` holds a NaN or an infinity."""
    if not np.all(np.isfinite(out)):
        bad = "NaN" if np.isnan(out).any() else "an infinite value"
        raise RuntimeFailure(f"'{node}' produced {bad}", node, span)


@dataclass
class ExecOptions:
    """Switches for the runtime's speed features (all on by default). Each one off gives the same
    numbers; ``fast_loops=False`` runs every step by the reference engine (``reference.py``)."""

    fast_loops: bool = True    # the fast paths (else the reference engine, for every step)
    defer_grads: bool = True   # gradients leaving a loop: one whole-sequence VJP after it, not one per step
    local_grads: bool = True   # sigmoid'/tanh'/... for a whole sequence before the backward loop
    alias_grads: bool = True   # add / slice gradients share buffers instead of being copied
    scratch: bool = True       # values and gradients needed within their step only: one (B, ...) array
    reuse_buffers: bool = True  # big arrays come from a pool and are reused once nothing refers to them
    row_grads: bool = True     # an embedding table's gradient says which rows are non-zero (RowGrad)
    prepared: bool = True      # steps outside loops: a flat list of bound kernels, kept per batch geometry
    distinct_words: bool = True  # a nested sequence's loops run over each distinct word of a batch once
    # single-use passes: a value nothing in the backward pass reads lends its array to its own
    # gradient (a recurrent layer's hoisted input projection: 3.3 MB in the benchmark's tagger)
    lend_dead: bool = True
    # single-use passes: a gradient the prepared backward pass writes after the last use of an array of
    # its own (the logits, once their gradient has been read) is written into that array instead of
    # another (the benchmark LSTM: the embedding's and the input weights' gradients, 0.4 MB)
    share_dead: bool = True
    # single-use passes: an op that may (``Op.spends_input``: relu, sigmoid, tanh, exp) computes its
    # output in its input's array when nothing else reads that input (``PlanFacts.spendable``), as a
    # hand-written step does: the benchmark MLP's pre-activations need no arrays of their own
    spend_inputs: bool = True
    # an embedding table's row gradient for a few ids (``rowgrad.FEW_IDS``) without repeats: scattered
    # as they are, no argsort and gathers (the same numbers and rows)
    few_ids: bool = True
    # parameters stacked by concat_rows and stored as blocks of one array (Model does so): the
    # stacked value is a view of it, not a copy made at every pass
    param_blocks: bool = True
    # a model's dense parameters stored as views of one flat array, their gradients handed out as
    # views of one flat gradient array laid out alike (``paramblocks.flatten``, ``FlatGrads``): an
    # optimiser updates all of them in one call (``Optimizer.flat``)
    flat_params: bool = True
    # parameters stacked by concat_rows: a prepared pass keeps the stack's view of their block while
    # they are the same arrays, and the one VJP reading the stack writes its gradient straight into
    # their block of the flat gradient array (not into an array of its own, then copied)
    stacked_grads: bool = True
    # a state's gradient (h, c) in a loop's backward pass: a ring of max delay + 1 steps, each step's
    # slot filled with its gradient from after the loop as the pass reaches it, not a (T, B, ...)
    # array plus the incoming one added in (the benchmark LSTM H512: 4.6 MB); in a fused loop's backward
    # kernel, every gradient nothing reads after it (``fusedcode.Layout.slots``: the tiny LSTM's 24 -> 12 KiB)
    ring_grads: bool = True
    # a loop body's value whose gradient its op passes unchanged to an operand that is a slice of another
    # body value, read by nothing else, keeps its gradient in that slice's part of its source's gradient:
    # no buffer of its own and no copy (the GRU's U h[t-1] + b_hn: a (T, B, H) array, 0.57 MB in the bench)
    grads_in_views: bool = True
    # a loop body's value that only backward steps read, made by one exactly rounded operation (+, -, *)
    # from values kept anyway, is held for one step and made again where the backward pass reads it
    # (the GRU's 1 - z: a (T, B, H) array, 0.57 MB in the bench)
    recompute: bool = True
    fused_loops: bool = True   # small loops: one compiled kernel per direction (runtime/fused.py, needs numba)
    # float32 loops on the NumPy path: sigmoid by one vectorised compiled kernel, not four NumPy calls
    # (runtime/fastact.py, needs numba; after fastact.AFTER_PASSES passes, as fused loops)
    fast_sigmoid: bool = True
    # float32 loops on the NumPy path: each run of consecutive elementwise steps (forward ops, backward
    # VJPs) as one call of a compiled, vectorised kernel (runtime/segments.py, needs numba; after
    # segments.AFTER_PASSES passes, as fused loops)
    fused_segments: bool = True
    # float32 steps outside loops in a prepared pass: a one-input elementwise step whose VJP reads only
    # its output (relu, sigmoid, tanh, exp) as one call of a compiled, vectorised kernel each way, made
    # from its scalar form as a fused segment is (runtime/plainkernels.py, needs numba; after
    # plainkernels.AFTER_PASSES passes): NumPy's relu and its VJP take 7 us on the benchmark MLP's
    # (64, 256), the kernels 2-3
    plain_kernels: bool = True
    # float32 softmax cross-entropy of logits (cross_entropy_logits), forward and VJP, each one compiled
    # kernel (runtime/plainkernels.py, needs numba; after plainkernels.AFTER_PASSES passes); padding,
    # masked positions and other layouts take the op's NumPy maths
    fast_loss: bool = True
    # a loop step's product by a weight shared by every step (U @ h[t-1], and its input's gradient) in
    # parts, by contiguous copies of the weight's parts made once a pass, where the machine's BLAS
    # kernel multiplies those faster (ops/linalg.py product_blocks: OpenBLAS SkylakeX)
    blocked_products: bool = True
    # BLAS threads for a whole forward or backward pass, and while a loop runs step by step.
    # nnspec's products are small (a step: (B, H) x (H, 4H)); measured on a 2-core machine,
    # a second OpenBLAS thread made every one of them slower, even the (1120 x 128) x
    # (128 x 1000) output layer (3.7 ms on 1 thread, 8 ms at best on 2), and a machine whose
    # other core is busy made it catastrophic (a step's product 0.08 ms -> 16 ms median; a
    # BiLSTM train step 60 ms -> 240 ms). None: leave BLAS as configured (big models on many
    # idle cores); the loop setting applies inside the pass setting.
    blas_threads: int | None = 1
    loop_blas_threads: int | None = 1

    @classmethod
    def reference(cls) -> "ExecOptions":
        """Every step by the reference engine, no speed feature: the oracle the fast paths are tested against."""
        return cls(fast_loops=False, defer_grads=False, local_grads=False, alias_grads=False, scratch=False,
                   reuse_buffers=False, row_grads=False, prepared=False, lend_dead=False, share_dead=False,
                   spend_inputs=False, grads_in_views=False, recompute=False,
                   param_blocks=False, flat_params=False, stacked_grads=False, few_ids=False, fused_loops=False, ring_grads=False, fast_sigmoid=False,
                   fused_segments=False, blocked_products=False, distinct_words=False, plain_kernels=False,
                   fast_loss=False)


@dataclass(slots=True)   # (made every pass: no instance dict)
class RunContext:
    """How one pass runs, besides its parameters and feeds: in training or not, with which random
    stream (dropout), and whether every value is checked for NaN as it is made."""

    train: bool = False
    rng: np.random.Generator | None = None
    check_finite: bool = False

    def ctx(self, axis: TimeAxis | None = None, **more) -> Ctx:
        """An op's ``Ctx``; ``axis``: the time axis of its first input (its mask and lengths)."""
        if axis is None:
            return Ctx(train=self.train, rng=self.rng, **more)
        return Ctx(train=self.train, rng=self.rng, mask=axis.mask, lengths=axis.lengths, rows=axis.rows,
                   gather=axis.gather, **more)


@dataclass
class Tape:
    """What the forward pass keeps for the backward pass."""

    values: dict[str, np.ndarray]
    records: dict = field(default_factory=dict)        # op id -> (inputs, ctx); loops: (id, t) -> ...
    lengths: np.ndarray | None = None                   # lengths, mask, steps: those of the plan's one
    mask: np.ndarray | None = None                      # axis, or its first output's (``axes`` has every axis)
    batch: int = 1
    steps: int = 0                                      # T (0 when no sequences)
    final_states: dict[str, np.ndarray] = field(default_factory=dict)
    initial_values: dict[str, np.ndarray] = field(default_factory=dict)
    loops: dict = field(default_factory=dict)           # loop index -> its kept run (fast path)
    carry: dict = field(default_factory=dict)           # the previous chunk's final states (nnspec.chunks)
    before_chunk: dict = field(default_factory=dict)    # state -> its values at steps -P..-1 (nnspec.chunks)
    ahead: dict = field(default_factory=dict)           # input -> the tokens after this chunk
    prepared: object = None                             # the prepared pass that made it (fast path)
    single_use: bool = False                            # for one backward pass (Executor.forward)
    used: bool = False                                  # a backward pass has run over it
    fresh: set | None = None                            # single use: values in arrays the runtime made
    context: RunContext = field(default_factory=RunContext)
    axes: dict[str, TimeAxis] = field(default_factory=dict)  # the batch's sequence axes by name
    axis_of: dict[str, str] = field(default_factory=dict)    # sequence value -> the name of its axis

    def rows(self, axis: TimeAxis) -> int:
        """The rows a sequence on ``axis`` runs in: the batch, or a nested inner axis's words."""
        return axis.batch if axis.rows is not None else self.batch

    def axis(self, value: str) -> TimeAxis:
        """The time axis a sequence value runs along."""
        return self.axes[self.axis_of[value]]
