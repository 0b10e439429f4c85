"""The same train steps in idiomatic PyTorch eager mode on the CPU.

nn.Embedding / nn.RNN / nn.LSTM / nn.GRU (time-major, batch_first=False) / nn.Linear,
F.cross_entropy and torch.optim.SGD, loaded with the same weights and batch as the
NumPy baseline (bench.configs). Importing this module needs torch; the harness skips
the implementation when the import fails.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.configs import init_params, make_batch

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
RNN_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class TorchModel:
    def __init__(self, cfg, dtype=np.float32, params=None, batch=None):
        params = init_params(cfg, dtype) if params is None else params
        x, y = make_batch(cfg, dtype) if batch is None else batch
        self.cfg, tdt = cfg, TORCH_DTYPES[np.dtype(dtype)]
        if cfg.kind == "mlp":
            linears = [nn.Linear(a, b, dtype=tdt) for a, b in zip(cfg.sizes[:-1], cfg.sizes[1:])]
            layers = []
            for lin in linears:
                layers += [lin, nn.ReLU()]
            self.net = nn.Sequential(*layers[:-1])
            names = {}
            for i, lin in enumerate(linears):
                names |= {f"W{i}": lin.weight, f"b{i}": lin.bias}
        else:
            self.emb = nn.Embedding(cfg.vocab, cfg.embed, dtype=tdt)
            self.rnn = RNN_MODULES[cfg.cell](cfg.embed, cfg.hidden, dtype=tdt,
                                             bidirectional=cfg.bidirectional)
            self.out = nn.Linear(cfg.directions * cfg.hidden, cfg.classes, dtype=tdt)
            names = {"emb": self.emb.weight, "W_out": self.out.weight, "b_out": self.out.bias}
            for sfx in ["", "_rev"][: cfg.directions]:
                for ours, theirs in [("W_ih", "weight_ih"), ("W_hh", "weight_hh"),
                                     ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]:
                    names[ours + sfx] = getattr(self.rnn, f"{theirs}_l0{'_reverse' if sfx else ''}")
            self.net = nn.ModuleList([self.emb, self.rnn, self.out])
        self.params = names
        assert set(names) == set(params) and len(names) == len(list(self.net.parameters()))
        with torch.no_grad():
            for k, t in self.params.items():
                t.copy_(torch.from_numpy(params[k]))
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y).reshape(-1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr)

    def loss(self):
        if self.cfg.kind == "mlp":
            return F.cross_entropy(self.net(self.x), self.y)
        h, _ = self.rnn(self.emb(self.x))  # (T, B, D*H)
        logits = self.out(h)
        return F.cross_entropy(logits.reshape(-1, self.cfg.classes), self.y)

    def loss_and_grads(self) -> float:
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        return loss.item()

    def grads(self) -> dict[str, np.ndarray]:
        return {k: t.grad.detach().numpy() for k, t in self.params.items()}

    def step(self):
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss.detach()  # no .item(): the harness converts only when it looks


class TorchImpl:
    """harness.Implementation for PyTorch eager, on as many threads as NumPy's BLAS."""

    name = "torch"
    traces_memory = False  # torch's allocator is invisible to tracemalloc

    def __init__(self, threads: int | None = None):
        from bench.harness import blas_threads

        self.threads = threads or blas_threads()[0]

    def setup(self, config, dtype):
        torch.set_num_threads(self.threads)
        return TorchModel(config, dtype).step

    def info(self) -> dict:
        return {"version": torch.__version__, "threads": self.threads}
