"""The NumPy baselines must compute exactly what PyTorch computes.

Float64, identical weights and batch: the loss and every parameter gradient must agree
to 1e-8 (relative to each array's scale), over two consecutive steps (the second one catches stale preallocated
buffers and checks the SGD update). Run from the bench folder: `pytest test_numpy_impl.py`.
"""
import numpy as np
import pytest

from bench.configs import CONFIGS, SeqConfig
from bench.numpy_impl import build

torch_impl = pytest.importorskip("bench.torch_impl")

RTOL = 1e-8


def assert_close(ours, ref, what):
    """Elementwise rtol 1e-8, and atol 1e-8 relative to the array's scale: gradients here
    are ~1e-5..1e-3, so a bare atol of 1e-8 would be far too loose."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max(), err_msg=what)

# Beyond the benchmark configs: odd sizes (E != H, B != T) and a bidirectional GRU / RNN.
EXTRA = [SeqConfig("bigru_small", "gru", vocab=50, embed=7, hidden=5, seq_len=6, batch=3,
                   classes=4, bidirectional=True, task="tag"),
         SeqConfig("birnn_small", "rnn", vocab=50, embed=7, hidden=5, seq_len=6, batch=3,
                   classes=4, bidirectional=True, task="tag")]


@pytest.mark.parametrize("cfg", list(CONFIGS.values()) + EXTRA, ids=lambda c: c.name)
def test_matches_torch_float64(cfg):
    ours = build(cfg, np.float64)
    ref = torch_impl.TorchModel(cfg, np.float64)
    for step in range(2):
        loss = ours.loss_and_grads()
        ref_loss = ref.loss_and_grads()
        assert_close(loss, ref_loss, f"loss, step {step}")
        ref_grads = ref.grads()
        assert set(ours.grads) == set(ref_grads)
        for k, g in ours.grads.items():
            assert_close(g, ref_grads[k], f"d{k}, step {step}")
            assert np.abs(g).max() > 0, f"d{k} is all zero: the check would be vacuous"
        ours.sgd_()
        ref.opt.step()
    for k, p in ours.params.items():
        assert_close(p, ref.params[k].detach().numpy(), k)


@pytest.mark.parametrize("name", ["mlp", "lstm", "gru"])
def test_float32_step_runs_and_agrees(name):
    """The benchmarked float32 path: same first loss as float64, loss goes down."""
    cfg = CONFIGS[name]
    m32, m64 = build(cfg, np.float32), build(cfg, np.float64)
    first = m32.step()
    assert abs(first - m64.step()) < 1e-4 * abs(first)
    for _ in range(5):
        last = m32.step()
    assert last < first
