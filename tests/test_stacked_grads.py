"""The gradient of gate weights stacked by ``concat_rows`` written by the one VJP that reads the
stack straight into their block of the flat gradient array (``GradSum.first_stacked``,
``ExecOptions.stacked_grads``), and a fused loop's backward arguments kept per geometry: training
gives the numbers of the switch off bit for bit, and the reference engine's within rounding."""
import numpy as np
import pytest

from nnspec import compile_text
from nnspec.model import Model
from nnspec.runtime import gradsum
from nnspec.runtime.executor import Executor
from nnspec.runtime.tape import ExecOptions
from nnspec.train.optim import make_optimizer

LM = ("input w : seq of token\ntarget y : seq of class\ne = embed(w, 8)\nh = lstm(e, H = 4)\n"
      "p = softmax(W_out @ h + b_out)\nloss cross_entropy(p, y)\n")
GRU = LM.replace("lstm", "gru")


def _model(text, dtype, reference=False, **off):
    model = Model(compile_text(text, bindings={"vocab(w)": 11, "classes(y)": 9}), dtype=dtype, seed=0)
    if reference:
        model.executor = Executor(model.plan, model.dtype, options=ExecOptions.reference())
    for k, v in off.items():
        setattr(model.executor.options, k, v)
    if model.executor.fused is not None:
        model.executor.fused.after = 0      # (fused loops from the first pass, where numba is installed)
    return model


def _train(model, steps=8, seed=0):
    rng, opt, losses = np.random.default_rng(seed), make_optimizer("sgd", lr=0.5), []
    for _ in range(steps):
        feeds = {"w": rng.integers(0, 11, size=(5, 1)), "y": rng.integers(0, 9, size=(5, 1))}
        loss, grads, _ = model.loss_and_grads(feeds, single_use=True)
        losses.append(float(loss))
        opt.step(model.params, grads, consume=True)
    return losses, {k: v.copy() for k, v in model.params.items()}


@pytest.mark.parametrize("text", [LM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacked_gradients_written_in_place_train_as_the_switch_off_and_the_reference(text, dtype, monkeypatch):
    written = []
    first = gradsum.GradSum.first_stacked

    def spy(self, *a):
        block = first(self, *a)
        written.append(block is not None)
        return block
    monkeypatch.setattr(gradsum.GradSum, "first_stacked", spy)
    losses, params = _train(_model(text, dtype))
    assert any(written)                                    # (the path is taken)
    off_losses, off_params = _train(_model(text, dtype, stacked_grads=False))
    assert losses == off_losses
    for k in params:
        np.testing.assert_array_equal(params[k], off_params[k], err_msg=k)
    ref_losses, ref_params = _train(_model(text, dtype, reference=True))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(losses, ref_losses, **tol)
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], err_msg=k, **tol)


def test_gradients_someone_holds_are_never_written_by_the_next_pass():
    """The stacked parameters' gradients handed out are the flat gradient array's: a pass while the
    caller holds them writes into other arrays, and the held numbers stay as they were."""
    model = _model(LM, np.float64)
    feeds = {"w": np.array([[1], [2], [3]]), "y": np.array([[0], [4], [8]])}
    for _ in range(3):
        model.loss_and_grads(feeds, single_use=True)
    _, grads, _ = model.loss_and_grads(feeds, single_use=True)
    kept = {k: g.copy() for k, g in grads.items()}
    other = {"w": np.array([[5], [6], [7]]), "y": np.array([[1], [2], [3]])}
    _, again, _ = model.loss_and_grads(other, single_use=True)
    for k in kept:
        np.testing.assert_array_equal(grads[k], kept[k], err_msg=k)
        assert not np.shares_memory(grads[k], again[k])


def test_a_parameter_replaced_between_passes_is_stacked_anew():
    """A prepared pass keeps a stack's view while its parameters are the same arrays: a parameter
    replaced by another array is read from there (the loss of the reference engine)."""
    model, reference = _model(LM, np.float64), _model(LM, np.float64, reference=True)
    feeds = {"w": np.array([[1], [2], [3]]), "y": np.array([[0], [4], [8]])}
    for _ in range(4):
        model.loss_and_grads(feeds, single_use=True)
    for name in ("h.Wf", "h.bi", "h.Ug"):
        model.params[name] = model.params[name] * 2.0 + 0.5
        reference.params = dict(model.params)
        loss, grads, _ = model.loss_and_grads(feeds, single_use=True)
        ref_loss, ref_grads, _ = reference.loss_and_grads(feeds)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
        for k in ref_grads:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_a_fused_loops_kept_argument_lists_hold_no_pass_inputs_between_passes():
    """A fused loop's kernel argument lists are kept per geometry, the pass's inputs (outside
    values, initial states) put in for the call only: between passes they hold none of them, so
    that the prepared pass's arrays they were stay free to be used again."""
    pytest.importorskip("numba")
    model = _model(LM, np.float32)
    feeds = {"w": np.array([[1], [2], [3]]), "y": np.array([[0], [4], [8]])}
    for _ in range(4):
        _, grads, tape = model.loss_and_grads(feeds, single_use=True)
    arrays = tape.loops[0].arrays
    assert arrays.G is not None and arrays.per_pass_fwd and arrays.per_pass_bwd
    assert all(arrays.fwd_args[i] is None for i, _ in arrays.per_pass_fwd)
    assert all(arrays.bwd_args[i] is None for i, _ in arrays.per_pass_bwd)
    run = model.executor._pass_run
    del grads, tape
    _, grads, tape = model.loss_and_grads(feeds, single_use=True)
    assert model.executor._pass_run is run        # (nobody held its arrays: used again)
    assert tape.loops[0].arrays is arrays          # (and the loop's arrays used again)
