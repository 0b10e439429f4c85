"""The standard cells agree with PyTorch's nn.RNN, nn.LSTM and nn.GRU.

Same weights (moved with nnspec.torch_weights), float64: outputs and the
gradients of every weight match to 1e-9. Skipped when torch is not installed.
"""
import numpy as np
import pytest

from nnspec import compile_text
from nnspec.runtime import Executor
from nnspec.torch_weights import bias_gradients, from_torch, to_torch

torch = pytest.importorskip("torch")

T, B, N, H = 7, 3, 4, 5


def nnspec_run(spec: str, params: dict, x: np.ndarray, g: np.ndarray):
    """Outputs h and the gradients of sum(h * g) w.r.t. every parameter and x."""
    plan = compile_text(spec).plan
    ex = Executor(plan, dtype=np.float64)
    tape = ex.forward(params, {"x": x})
    grads = ex.backward(tape, seeds={"h": g})
    return tape.values["h"], grads


def torch_run(module, x: np.ndarray, g: np.ndarray):
    module = module.double()
    xt = torch.tensor(x, requires_grad=True)
    out, _ = module(xt)
    (out * torch.tensor(g)).sum().backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return out.detach().numpy(), grads, xt.grad.numpy()


CASES = [
    # (spec right-hand side, torch module, kind, nnspec instance names per layer and direction, width)
    ("rnn(x, H = 5)", lambda: torch.nn.RNN(N, H), "rnn", [["h"]], H),
    ("lstm(x, H = 5)", lambda: torch.nn.LSTM(N, H), "lstm", [["h"]], H),
    ("gru(x, H = 5)", lambda: torch.nn.GRU(N, H), "gru", [["h"]], H),
    ("stacked(lstm, 2)(x, H = 5)", lambda: torch.nn.LSTM(N, H, num_layers=2), "lstm", [["h.layer1"], ["h"]], H),
    ("stacked(gru, 2)(x, H = 5)", lambda: torch.nn.GRU(N, H, num_layers=2), "gru", [["h.layer1"], ["h"]], H),
    ("stacked(rnn, 2)(x, H = 5)", lambda: torch.nn.RNN(N, H, num_layers=2), "rnn", [["h.layer1"], ["h"]], H),
    ("bidirectional(lstm)(x, H = 5)", lambda: torch.nn.LSTM(N, H, bidirectional=True), "lstm",
     [["h.fwd", "h.bwd"]], 2 * H),
    ("bidirectional(gru)(x, H = 5)", lambda: torch.nn.GRU(N, H, bidirectional=True), "gru",
     [["h.fwd", "h.bwd"]], 2 * H),
    ("bidirectional(rnn)(x, H = 5)", lambda: torch.nn.RNN(N, H, bidirectional=True), "rnn",
     [["h.fwd", "h.bwd"]], 2 * H),
]


@pytest.mark.torch
@pytest.mark.parametrize("rhs,make,kind,instances,width", CASES, ids=[c[0] for c in CASES])
def test_matches_pytorch(rhs, make, kind, instances, width):
    torch.manual_seed(0)
    module = make()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, B, N))
    g = rng.normal(size=(T, B, width))
    state = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    spec = f"input x[{N}] : seq\noutput h\nh = {rhs}\n"

    h, grads = nnspec_run(spec, from_torch(state, kind, instances), x, g)
    out, tgrads, tx = torch_run(module, x, g)

    assert np.abs(h - out).max() < 1e-9
    assert np.abs(grads["x"] - tx).max() < 1e-9
    weights = to_torch(grads, kind, instances)
    biases = bias_gradients(grads, kind, instances)
    for name, tg in tgrads.items():
        ours = biases[name] if name.startswith("bias") else weights[name]
        assert np.abs(ours - tg).max() < 1e-9, name


def test_weights_round_trip_through_the_torch_layout():
    rng = np.random.default_rng(0)
    state = {f"{w}_l0": rng.normal(size=(3 * H, N if w == "weight_ih" else H)) for w in ("weight_ih", "weight_hh")}
    state.update({f"{b}_l0": rng.normal(size=3 * H) for b in ("bias_ih", "bias_hh")})
    params = from_torch(state, "gru", [["h"]])
    back = to_torch(params, "gru", [["h"]])
    assert np.array_equal(back["weight_ih_l0"], state["weight_ih_l0"])
    # the merged r and z biases come back as their sum in bias_ih, the candidate's two stay apart
    assert np.allclose(back["bias_ih_l0"][:2 * H], state["bias_ih_l0"][:2 * H] + state["bias_hh_l0"][:2 * H])
    assert np.array_equal(back["bias_hh_l0"][2 * H:], state["bias_hh_l0"][2 * H:])
