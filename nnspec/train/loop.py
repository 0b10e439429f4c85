"""The training loop: a pure function of (spec, data, settings, seed).

One generator, seeded once, draws everything random in order — batch order,
dropout masks — and parameters are initialised from (seed, name). So the same
inputs give the same weights, and a run resumed from its end-of-epoch
checkpoint (which stores the generator's state) ends exactly where an
uninterrupted run does.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..chunks import lookahead_depth
from ..dataset import BoundData
from ..model import Model
from ..plan import OpStep
from ..runtime import RuntimeFailure
from ..settings import TrainSettings
from .checkpoint import load_checkpoint, save_checkpoint
from .clip import clip_scale
from .optim import make_optimizer
from .progress import Progress
from .rundir import RunDir
from .schedule import make_schedule

CLASS_HEADS = {"cross_entropy", "cross_entropy_logits", "nll"}
BINARY_HEADS = {"bce": 0.5, "bce_logits": 0.0, "perceptron": 0.0}


class TrainingError(Exception):
    """Training cannot go on (e.g. a NaN); the message says where, the best checkpoint stays on disk."""


@dataclass
class Head:
    """A prediction compared with a target by a loss: what accuracy is measured on."""
    loss: str
    pred: str
    target: str
    kind: str            # "class" or "binary"
    threshold: float = 0.5
    tokens: bool = False  # the target is next tokens: report perplexity


def find_heads(model: Model) -> list[Head]:
    plan = model.plan
    steps = {s.id: s for s in plan.steps if isinstance(s, OpStep)}
    token_values = {v.name for v in plan.inputs if v.elem in ("token", "char")}
    heads = []
    for s in steps.values():
        if s.op in CLASS_HEADS or s.op in BINARY_HEADS:
            pred, target = s.inputs[0][0], s.inputs[1][0]
            source = target
            while source in steps and steps[source].op in ("shift", "identity"):
                source = steps[source].inputs[0][0]
            kind = "class" if s.op in CLASS_HEADS else "binary"
            heads.append(Head(s.id, pred, target, kind, BINARY_HEADS.get(s.op, 0.5),
                              tokens=source in token_values))
    return heads


@dataclass
class EvalResult:
    loss: float
    metrics: dict[str, float]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def evaluate(model: Model, data: BoundData, split: str, settings: TrainSettings,
             keep_predictions: bool = False) -> EvalResult:
    """Mean loss and accuracy (or perplexity) over a split, in evaluation mode."""
    heads = find_heads(model)
    total, weight = 0.0, 0.0
    correct = {h.loss: 0 for h in heads}
    counted = {h.loss: 0 for h in heads}
    preds: dict[str, list] = {h.loss: [] for h in heads}
    carry = None
    for batch in data.batches(split, settings.batch, bptt=settings.bptt, ahead=lookahead_depth(model.plan),
                              dtype=model.dtype):
        tape = model.run(batch.arrays, batch.lengths, carry=carry if batch.carry else None)
        if data.stream:
            carry = dict(tape.final_states)
        w = _targets_in(tape, heads, batch)
        if model.plan.loss is not None:
            total += float(tape.values[model.plan.loss]) * w
            weight += w
        for h in heads:
            gold = tape.values[h.target]
            p = tape.values[h.pred]
            if h.kind == "class":
                guess = p.argmax(-1)
                valid = gold >= 0
            else:
                guess = (p > h.threshold).astype(gold.dtype)
                valid = np.ones(gold.shape, dtype=bool)
            if tape.mask is not None and valid.ndim >= 2 and valid.shape[:2] == tape.mask.shape:
                valid = valid & (tape.mask.reshape(tape.mask.shape + (1,) * (valid.ndim - 2)) > 0)
            correct[h.loss] += int(((guess == gold) & valid).sum())
            counted[h.loss] += int(valid.sum())
            if keep_predictions:
                preds[h.loss].append((guess[valid].ravel(), gold[valid].ravel()))
        del tape  # lets the next batch reuse the loops' buffers
    loss = total / weight if weight else float("nan")
    metrics = {"loss": loss}
    for h in heads:
        key = "accuracy" if len(heads) == 1 else f"accuracy.{h.loss}"
        metrics[key] = correct[h.loss] / counted[h.loss] if counted[h.loss] else float("nan")
        if h.tokens:
            metrics["perplexity"] = math.exp(min(loss, 700.0))
    result = EvalResult(loss, metrics)
    if keep_predictions:
        result.predictions = {k: (np.concatenate([a for a, _ in v]) if v else np.zeros(0, int),
                                  np.concatenate([b for _, b in v]) if v else np.zeros(0, int))
                              for k, v in preds.items()}
    return result


def _targets_in(tape, heads: list[Head], batch) -> float:
    """How many targets a batch's mean loss averaged over (to weight it in a split's mean)."""
    for h in heads:
        gold = tape.values[h.target]
        if h.kind == "class":
            valid = gold >= 0
            if tape.mask is not None and valid.shape == tape.mask.shape:
                valid = valid & (tape.mask > 0)
            return float(valid.sum())
    return float(batch.size)


def selection_metric(settings: TrainSettings, heads: list[Head]) -> tuple[str, bool]:
    """Which dev metric picks the best epoch, and whether higher is better."""
    if settings.metric:
        return settings.metric, settings.metric == "accuracy"
    if heads and not any(h.tokens for h in heads) and len(heads) == 1:
        return "accuracy", True
    return "loss", False


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    best_epoch: int
    best: dict[str, float]
    test: dict[str, float] | None = None
    converged: bool | None = None      # perceptron rule: an epoch without mistakes
    epochs_run: int = 0
    seconds: float = 0.0
    run_dir: str | None = None


class Trainer:
    def __init__(self, model: Model, data: BoundData, settings: TrainSettings, *,
                 run_dir: RunDir | None = None, spec_hash: str | None = None, quiet: bool = False,
                 stream=None, on_epoch=None):
        self.model, self.data, self.settings = model, data, settings
        self.on_epoch = on_epoch  # called with each epoch's row; True stops training (a sweep's pruning)
        self.stopped = False
        self.run_dir, self.spec_hash = run_dir, spec_hash
        self.quiet, self.stream = quiet, stream if stream is not None else sys.stderr
        self.heads = find_heads(model)
        perceptron = settings.rule == "perceptron"
        opt_name = "sgd" if perceptron else settings.optimizer.name
        opt_args = {"lr": settings.lr if settings.lr is not None else 1.0} if perceptron else settings.optimizer_args()
        try:
            self.optimizer = make_optimizer(opt_name, **opt_args)
        except ValueError as e:
            raise TrainingError(f"optimizer: {e}") from None
        self.base_lr = self.optimizer.lr
        self.schedule = None
        if settings.schedule is not None:
            try:
                self.schedule = make_schedule(settings.schedule.name, lr=self.base_lr, **settings.schedule.args)
            except (ValueError, TypeError) as e:
                raise TrainingError(f"schedule: {e}") from None
        self.batch_size = 1 if perceptron else settings.batch
        self.rng = np.random.default_rng(settings.seed)
        self.step = 0
        self.history: list[dict] = []
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_params: dict[str, np.ndarray] | None = None
        self.start_epoch = 0

    # ---- resume -------------------------------------------------------------
    def resume(self, path) -> None:
        ck = load_checkpoint(path, expected_spec_hash=self.spec_hash)
        for k, v in ck.params.items():
            self.model.params[k] = v.astype(self.model.dtype)
        if ck.optimizer_state:
            self.optimizer.load_state_dict(ck.optimizer_state)
        self.rng = ck.rng()
        self.start_epoch = ck.epoch
        self.step = ck.step
        extra = ck.extra or {}
        self.history = list(extra.get("history", []))
        self.best_score = extra.get("best_score")
        self.best_epoch = extra.get("best_epoch", 0)
        if self.run_dir is not None and (self.run_dir.best / "weights.safetensors").exists():
            self.best_params = load_checkpoint(self.run_dir.best).params

    # ---- one epoch ------------------------------------------------------------
    def _train_epoch(self, epoch: int, progress: Progress) -> tuple[float, int]:
        s, model = self.settings, self.model
        total, count, mistakes = 0.0, 0, 0
        carry = None
        for batch in self.data.batches("train", self.batch_size, shuffle=s.rule != "perceptron", rng=self.rng,
                                       by_length=s.by_length, bptt=s.bptt, ahead=lookahead_depth(model.plan),
                                       dtype=model.dtype):
            self._check_memory(batch)
            if self.schedule is not None:
                self.optimizer.lr = self.schedule.lr_at(self.step, epoch)
            with np.errstate(invalid="ignore", divide="ignore"):  # a NaN is caught and named below
                loss, grads, tape = model.loss_and_grads(batch.arrays, batch.lengths, rng=self.rng,
                                                         carry=carry if batch.carry else None,
                                                         single_use=s.rule != "perceptron")
            if not math.isfinite(loss) or not all(np.isfinite(g).all() for g in grads.values()):
                self._diagnose_nan(batch, carry, loss)
            if self.data.stream:
                carry = dict(tape.final_states)
            if s.rule == "perceptron":
                mistakes += sum(int(((tape.values[h.pred] > 0) != (tape.values[h.target] > 0.5)).sum())
                                for h in self.heads)
            scale = clip_scale(grads, s.clip)[1] if s.clip else 1.0
            # the gradients are the executor's own and dropped below: the update may overwrite them
            self.optimizer.step(model.params, grads, scale=scale, consume=True)
            self.step += 1
            total += loss * batch.size
            count += batch.size
            progress.step(batch.size if not self.data.stream else int(batch.lengths.sum()), loss)
            del grads, tape  # held into the next batch, they would keep it from reusing the loops' buffers
        return (total / count if count else float("nan")), mistakes

    def _steps_per_epoch(self) -> int:
        """For the progress bar's ETA."""
        if self.data.stream:
            steps = (len(self.data.streams["train"]) - 1) // self.batch_size   # of each column
            return max(1, -(-steps // (self.settings.bptt or 35)))
        return max(1, -(-self.data.size("train") // self.batch_size))

    def _check_memory(self, batch) -> None:
        if batch.mask is None:
            return
        T, B = batch.mask.shape
        need = estimate_bptt_bytes(self.model, T, B)
        limit = self.settings.memory_limit_mb * 2 ** 20
        if need > limit:
            raise TrainingError(f"a batch of {B} sequences of {T} steps needs about {need / 2 ** 20:,.0f} MiB for "
                                f"backpropagation through time, over the limit of {limit / 2 ** 20:,.0f} MiB; "
                                f"use a smaller batch, shorter sequences (max_length), truncated BPTT (bptt), "
                                f"or raise memory_limit_mb")
        if self.settings.max_length is not None and T > self.settings.max_length:
            raise TrainingError(f"a sequence of {T} steps is longer than max_length {self.settings.max_length}")

    def _diagnose_nan(self, batch, carry, loss) -> None:
        """Re-run the failing step with checks on every value to name the node that went bad."""
        ex = self.model.executor
        ex.check_finite = True
        try:
            state = np.random.default_rng(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.model.run(batch.arrays, batch.lengths, train=True, rng=state,
                               carry=carry if batch.carry else None)
            where = "the gradients" if math.isfinite(loss) else "the loss"
            raise TrainingError(f"training stopped at step {self.step + 1}: {where} became NaN or infinite; "
                                f"try a smaller learning rate or gradient clipping (clip 5)")
        except RuntimeFailure as e:
            raise TrainingError(f"training stopped at step {self.step + 1}: {e}; try a smaller learning rate, "
                                f"gradient clipping (clip 5) or input normalisation (normalize true)") from None
        finally:
            ex.check_finite = False

    # ---- the loop ---------------------------------------------------------------
    def fit(self) -> TrainResult:
        s = self.settings
        start = time.perf_counter()
        metric, higher = selection_metric(s, self.heads)
        unit = "tok" if self.data.stream else "ex"
        steps_per_epoch = self._steps_per_epoch()
        converged = None
        epoch = self.start_epoch
        with Progress(s.epochs, steps_per_epoch, unit=unit, quiet=self.quiet, stream=self.stream) as progress:
            for epoch in range(self.start_epoch, s.epochs):
                progress.start_epoch(epoch + 1)
                train_loss, mistakes = self._train_epoch(epoch, progress)
                row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self.optimizer.lr}
                if s.rule == "perceptron":
                    row["train_mistakes"] = mistakes
                if self.data.has("dev"):
                    dev = evaluate(self.model, self.data, "dev", s)
                    row.update({f"dev_{k}": v for k, v in dev.metrics.items()})
                    score = dev.metrics.get(metric, dev.loss)
                else:
                    score = -train_loss if higher else train_loss
                better = self.best_score is None or (score > self.best_score if higher else score < self.best_score)
                if better and math.isfinite(score):
                    self.best_score, self.best_epoch = score, epoch + 1
                    self.best_params = {k: v.copy() for k, v in self.model.params.items()}
                    self._save("best", epoch + 1, row)
                self.history.append(row)
                if self.run_dir is not None:
                    self.run_dir.log_metrics(row)
                self._save("last", epoch + 1, row)
                progress.end_epoch({k: v for k, v in row.items() if k not in ("epoch",)})
                if self.on_epoch is not None and self.on_epoch(row):
                    self.stopped = True
                    break
                if s.rule == "perceptron" and mistakes == 0:
                    converged = True
                    break
                if s.patience is not None and epoch + 1 - self.best_epoch >= s.patience:
                    progress.print(f"early stopping: no better dev {metric} for {s.patience} epochs")
                    break
            else:
                if s.rule == "perceptron":
                    converged = False
        if self.best_params is not None and self.data.has("dev"):
            self.model.params.update(self.best_params)  # keep the best-dev epoch
        result = TrainResult(params=self.model.params, history=self.history, best_epoch=self.best_epoch,
                             best=dict(self.history[self.best_epoch - 1]) if self.best_epoch else {},
                             converged=converged, epochs_run=len(self.history),
                             seconds=time.perf_counter() - start,
                             run_dir=str(self.run_dir.path) if self.run_dir else None)
        if self.data.has("test"):
            result.test = evaluate(self.model, self.data, "test", s).metrics
        return result

    def _save(self, which: str, epoch: int, row: dict) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir.best if which == "best" else self.run_dir.last
        save_checkpoint(path, self.model.params, optimizer_state=self.optimizer.state_dict() if which == "last"
                        else None, spec_hash=self.spec_hash, epoch=epoch, step=self.step,
                        metrics={k: v for k, v in row.items() if isinstance(v, (int, float))},
                        rng=self.rng, vocabs=self.data.vocab_json(),
                        norm_stats={k: v.to_json() for k, v in self.data.standardizers.items()},
                        extra={"history": self.history,
                               "best_score": self.best_score, "best_epoch": self.best_epoch})


def estimate_bptt_bytes(model: Model, T: int, B: int) -> int:
    """Activation memory a BPTT step keeps: every sequence value, (T, B, size) each."""
    from ..plan import LoopStep
    total = 0
    for s in model.plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            if b.seq:
                size = 1
                for d in b.shape:
                    size *= d if isinstance(d, int) else 1
                total += T * B * size
    return total * model.dtype.itemsize * 2  # values and their gradients
