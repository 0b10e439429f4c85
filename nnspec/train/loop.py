"""The training loop: a pure function of (spec, data, settings, seed).

One generator, seeded once, draws everything random in order — batch order,
dropout masks — and parameters are initialised from (seed, name). So the same
inputs give the same weights, and a run resumed from its end-of-epoch
checkpoint (which stores the generator's state) ends exactly where an
uninterrupted run does.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..chunks import Stream
from ..dataset import BoundData
from ..model import Model
from ..ops import REGISTRY
from ..plan import OpStep
from ..errors import render_message
from ..runtime import RuntimeFailure, blas_threads
from ..settings import TrainSettings
from .average import make_average
from .checkpoint import TrainedMeta, load_checkpoint, save_checkpoint
from .clip import clip_scale
from .nonfinite import (all_finite, describe_node, forward_failure, nonfinite_names, sources_of,
                        what_and_bad, what_is_bad)
from .optim import make_optimizer
from .notebook_progress import progress_class
from .progress import Progress
from .rundir import RunDir
from .schedule import make_schedule


# A kill loses at most this much training (plus the epoch under way); the first checkpoint is
# written sooner, at the first epoch ending FIRST_CHECKPOINT_SECONDS into training, so an
# interrupted run soon has something to resume, while a run shorter than that writes once.
CHECKPOINT_SECONDS = 30.0
FIRST_CHECKPOINT_SECONDS = 1.0

AVERAGE_PREFIX = "average."   # the weight averages' entries in a checkpoint's optimiser state


class TrainingError(Exception):
    """Training cannot go on (e.g. a NaN); the message says where, the best checkpoint stays on disk.
    ``span``: the source of the value that went bad, when one did (``render`` shows it with a caret)."""

    def __init__(self, message: str, span=None, sources=None):
        super().__init__(message)
        self.span, self.sources = span, sources

    def render(self, color: bool = False) -> str:
        return render_message("error", str(self), self.span, self.sources, color)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the metrics and the best weights so far are on disk; ``resume_epoch``
    is the epoch ``last/`` holds (0: nothing to resume yet)."""

    def __init__(self, run_dir: str | None, epoch: int, resume_epoch: int):
        super().__init__()
        self.run_dir, self.epoch, self.resume_epoch = run_dir, epoch, resume_epoch


@dataclass
class Head:
    """A prediction compared with a target by a loss: what accuracy is measured on."""
    loss: str
    pred: str
    target: str
    kind: str            # "class" or "binary"
    threshold: float = 0.5
    tokens: bool = False  # the target is next tokens: report perplexity
    elem: str | None = None  # what the target's source input is made of (token, char...)


def find_heads(model: Model) -> list[Head]:
    plan = model.plan
    steps = {s.id: s for s in plan.steps if isinstance(s, OpStep)}
    token_values = {v.name for v in plan.inputs if v.elem in ("token", "char")}
    elems = {v.name: v.elem for v in plan.inputs + plan.targets}
    heads = []
    for s in steps.values():
        loss = REGISTRY[s.op]
        if loss.target in ("class", "binary"):   # a decision to score: accuracy
            pred, target = s.inputs[0][0], s.inputs[1][0]
            source = target
            while source in steps and _carries_ids(REGISTRY[steps[source].op]):
                source = steps[source].inputs[0][0]
            heads.append(Head(s.id, pred, target, loss.target,
                              0.5 if loss.threshold is None else loss.threshold,
                              tokens=source in token_values, elem=elems.get(source)))
    return heads


def _carries_ids(op) -> bool:
    """The op's output holds ids exactly when its input does (shift, identity): the same tokens."""
    return op.output_integer([True]) and not op.output_integer([False])


def loss_unit(model: Model) -> str | None:
    """What the loss is measured in, for a plot's axis: a likelihood loss in nats (per token or
    per character for a language model), a squared error in squared units; None when unknown."""
    steps = {s.id: s for s in model.plan.steps if isinstance(s, OpStep)}
    loss = steps.get(model.plan.loss)
    if loss is None:
        return None
    facts = REGISTRY[loss.op]
    if facts.target in ("class", "binary") and facts.prediction != "scores":  # a likelihood
        head = next((h for h in find_heads(model) if h.loss == loss.id), None)
        if head is not None and head.tokens:
            return "nats per character" if head.elem == "char" else "nats per token"
        return "nats"
    if facts.target == "real":
        return "squared error"
    return None


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
    # [axes] an encoder-decoder (sequences on several axes): whole output sequences exactly right
    sequences = {h.loss: [0, 0] for h in heads} if model.executor.facts.multi_axis else None
    head_loss = {h.loss: 0.0 for h in heads}   # each head's own loss, summed over its targets
    preds: dict[str, list] = {h.loss: [] for h in heads}
    stream = Stream(model.plan)
    # sequences of similar length share a batch whatever the settings say: the sums below do not
    # depend on the order, and padding is work (EWT's dev set: 0.95 -> 0.40 s)
    for batch in data.batches(split, settings.batch, by_length=True, bptt=settings.bptt, ahead=stream.ahead,
                              dtype=model.dtype):
        before = stream.carry_into(batch.carry)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a NaN is caught and named below
            tape = model.run(batch.arrays, batch.lengths, carry=before)
            finite = all_finite(tape.values[k] for k in _checked_outputs(model, heads))
        if not finite:
            raise forward_failure(model, "evaluating the data" if split == "all" else f"evaluating the {split} data",
                                  batch.arrays, batch.lengths, carry=before)
        if data.stream:
            stream.advance(tape)
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
            if sequences is not None and valid.ndim == 2:   # (T, B): every real step right, teacher-forced
                sequences[h.loss][0] += int((((guess == gold) | ~valid).all(axis=0) & valid.any(axis=0)).sum())
                sequences[h.loss][1] += int(valid.any(axis=0).sum())
            counted[h.loss] += int(valid.sum())
            head_loss[h.loss] += float(tape.values[h.loss]) * int(valid.sum())
            if keep_predictions:
                preds[h.loss].append((guess[valid].ravel(), gold[valid].ravel()))
        del tape  # lets the next batch reuse the loops' buffers
    loss = total / weight if weight else float("nan")
    metrics = {"loss": loss}
    for h in heads:
        key = "accuracy" if len(heads) == 1 else f"accuracy.{h.loss}"
        metrics[key] = correct[h.loss] / counted[h.loss] if counted[h.loss] else float("nan")
        if sequences is not None and sequences[h.loss][1]:
            right, total = sequences[h.loss]
            metrics["sequence_accuracy" if len(heads) == 1 else f"sequence_accuracy.{h.loss}"] = right / total
        if h.tokens:  # of this head's own loss: the spec's loss may weigh it or add others to it
            mean = head_loss[h.loss] / counted[h.loss] if counted[h.loss] else float("nan")
            metrics["perplexity"] = math.exp(min(mean, 700.0))
    result = EvalResult(loss, metrics)
    if keep_predictions:
        result.predictions = {k: (np.concatenate([a for a, _ in v]) if v else np.zeros(0, int),
                                  np.concatenate([b for _, b in v]) if v else np.zeros(0, int))
                              for k, v in preds.items()}
    return result


def _checked_outputs(model: Model, heads: list[Head]) -> list[str]:
    """The values an evaluation reads: the loss and each head's prediction (NaN anywhere before
    them reaches them)."""
    return ([model.plan.loss] if model.plan.loss is not None else []) + [h.pred for h in heads]


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
                 stream=None, progress: type[Progress] | None = None,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, on_epoch=None):
        self.model, self.data, self.settings = model, data, settings
        self.on_epoch = on_epoch  # called with each epoch's row; True stops training (a sweep's pruning)
        self.stopped = False
        # a bar on a terminal, a bar and live curves in a notebook (nnspec.train.notebook_progress)
        self.progress = progress or progress_class()
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
        self.average = None   # weight averaging: dev, test and the kept weights use the averages
        if settings.average is not None:
            try:
                self.average = make_average(settings.average.name, **settings.average.args)
            except (ValueError, TypeError) as e:
                raise TrainingError(f"average: {e}") from None
        self.batch_size = 1 if perceptron else settings.batch
        self.rng = np.random.default_rng(settings.seed)
        self.step = 0
        self.history: list[dict] = []
        self.best_score: float | None = None
        self.best_epoch = self.best_step = 0
        self.best_params: dict[str, np.ndarray] | None = None
        self.start_epoch = 0
        # checkpoint cadence: last/ when this many seconds passed since the previous save, and at
        # the end; best/ with it when dev improved in between (the best weights wait in memory)
        self.checkpoint_seconds = checkpoint_seconds
        self.saved_epoch = 0        # the epoch last/ on disk holds
        self.best_saved_epoch = 0   # the epoch best/ on disk holds
        self._saved_at: float | None = None

    # ---- resume -------------------------------------------------------------
    def resume(self, path) -> None:
        """Continue from the checkpoint at ``path`` (a run's ``last/``): weights, optimiser state,
        random generator and epoch; the history is the run's metrics up to that epoch (rows logged
        after it are dropped: the resumed run logs them again)."""
        ck = load_checkpoint(path, expected_spec_hash=self.spec_hash, schema=TrainedMeta,
                             expected_shapes={p.name: tuple(p.shape) for p in self.model.plan.params})
        for k, v in ck.params.items():
            mine = self.model.params.get(k)
            if isinstance(mine, np.ndarray) and mine.shape == v.shape and mine.flags.writeable:
                np.copyto(mine, v, casting="unsafe")   # into its array: a flat parameter stays one (paramblocks)
            else:
                self.model.params[k] = v.astype(self.model.dtype)
        if ck.optimizer_state:
            self._load_training_state(path, ck.optimizer_state)
        self.rng = ck.rng()
        self.start_epoch = self.saved_epoch = ck.epoch
        self.step = ck.step
        extra = ck.extra or {}
        self.best_score = extra.get("best_score")
        self.best_epoch = extra.get("best_epoch", 0)
        if self.run_dir is not None:
            self.run_dir.keep_epochs(ck.epoch)
            self.history = [dict(r) for r in self.run_dir.rows]
        else:
            self.history = list(extra.get("history", []))  # checkpoints of nnspec before 0.x kept it there
        self.history = self.history[:ck.epoch]
        best = self.run_dir.best if self.run_dir is not None else None
        if best is not None and (best / "weights.safetensors").exists():
            saved = load_checkpoint(best)
            # best/ can be ahead of last/ (a kill between the two saves, or Ctrl-C): the resumed
            # run reaches that epoch again and finds the same weights, so it is not the best yet
            if saved.epoch == self.best_epoch:
                self.best_params = saved.params
                self.best_saved_epoch, self.best_step = saved.epoch, saved.step

    def _training_state(self) -> dict:
        """What last/ keeps beside the weights: the optimiser's state, and the averages' under
        ``average.`` keys."""
        state = self.optimizer.state_dict()
        if self.average is not None:
            state.update({f"{AVERAGE_PREFIX}{k}": v for k, v in self.average.state_dict().items()})
        return state

    def _load_training_state(self, path, state: dict) -> None:
        averaged = {k[len(AVERAGE_PREFIX):]: v for k, v in state.items() if k.startswith(AVERAGE_PREFIX)}
        self.optimizer.load_state_dict({k: v for k, v in state.items() if not k.startswith(AVERAGE_PREFIX)})
        if self.average is None and averaged:
            raise TrainingError(f"{path}: the run being resumed averaged its weights ({averaged.get('kind')}); "
                                f"resume it with the same 'average' setting")
        if self.average is not None:
            if not averaged:
                raise TrainingError(f"{path}: the run being resumed did not average its weights; resume it "
                                    f"without the 'average' setting (or train again)")
            try:
                self.average.load_state_dict(averaged)
            except ValueError as e:
                raise TrainingError(f"{path}: {e}") from None

    def _evaluated_weights(self) -> dict[str, np.ndarray]:
        """The weights dev, test and the kept model use: the averages when averaging, else the
        training weights themselves."""
        if self.average is None or self.average.t == 0:
            return self.model.params
        return self.average.averages()

    def _evaluate_averaged(self, split: str) -> EvalResult:
        """Evaluate ``split`` with the averaged weights, copied into the parameters' own arrays (which
        may be views of one block the runtime reads at once) and the training weights put back after."""
        params = self.model.params
        if self.average is None or self.average.t == 0:
            return evaluate(self.model, self.data, split, self.settings)
        training = {k: v.copy() for k, v in params.items()}
        try:
            for k, a in self.average.averages().items():
                np.copyto(params[k], a)
            return evaluate(self.model, self.data, split, self.settings)
        finally:
            for k, v in training.items():
                np.copyto(params[k], v)

    # ---- one epoch ------------------------------------------------------------
    def _train_epoch(self, epoch: int, progress: Progress) -> tuple[float, int]:
        stream = Stream(self.model.plan)
        # once an epoch, not at every step: a tiny network's step takes ~100 us
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a NaN is caught and named below
            return self._train_batches(epoch, progress, stream)

    def _train_batches(self, epoch: int, progress: Progress, stream: Stream) -> tuple[float, int]:
        s, model = self.settings, self.model
        total, count, mistakes = 0.0, 0, 0
        for batch in self.data.batches("train", self.batch_size, shuffle=s.rule != "perceptron", rng=self.rng,
                                       by_length=s.by_length, bptt=s.bptt, ahead=stream.ahead, dtype=model.dtype):
            self._check_memory(batch)
            if self.schedule is not None:
                self.optimizer.lr = self.schedule.lr_at(self.step, epoch)
            loss, wrong = model.train_step(batch.arrays, batch.lengths, rng=self.rng,
                                           stream=stream if self.data.stream else None, continues=batch.carry,
                                           single_use=s.rule != "perceptron",
                                           then=partial(self._update, batch, stream.carry_into(batch.carry), epoch))
            mistakes += wrong
            total += loss * batch.size
            count += batch.size
            progress.step(batch.size if not self.data.stream else int(batch.lengths.sum()), loss)
        return (total / count if count else float("nan")), mistakes

    def _update(self, batch, carry, epoch: int, loss: float, grads: dict, values: dict) -> tuple[float, int]:
        """A training step's update from its loss and gradients (``Model.train_step``): (the loss,
        the perceptron's mistakes). A bad step is caught where it happens, at the cost of one sum
        per parameter (nonfinite.all_finite): the loss, the clipping's gradient norm when there is
        one, and the parameters after the update (a NaN gradient makes its parameter NaN). Runs
        inside the epoch's ``np.errstate``, which silences the overflows these checks name."""
        s = self.settings
        scale = 1.0
        if s.clip:
            norm, scale = clip_scale(grads, s.clip)
            if not math.isfinite(norm):
                self._diagnose_nan(batch, carry, loss, grads, epoch)
        if not math.isfinite(loss):
            self._diagnose_nan(batch, carry, loss, grads, epoch)
        mistakes = 0
        if s.rule == "perceptron":
            mistakes = sum(int(((values[h.pred] > 0) != (values[h.target] > 0.5)).sum()) for h in self.heads)
        updated = list(grads)
        # the gradients are the executor's own and dropped after the step: the update may overwrite them
        self.optimizer.step(self.model.params, grads, scale=scale, consume=True)
        if not all_finite(self.model.params[k] for k in updated):
            self._bad_update(updated, epoch)
        if self.average is not None:
            self.average.update(self.model.params)
        self.step += 1
        return loss, mistakes

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

    def _where(self, epoch: int) -> str:
        return f"training stopped at step {self.step + 1} (epoch {epoch + 1})"

    def _describe(self, node: str) -> str:
        return describe_node(self.model.compiled, node)

    def _diagnose_forward(self, batch, carry, epoch: int) -> None:
        """Re-run the failing step's forward pass with checks on every value: raises naming the first
        value that went bad, if one did."""
        failure = self.model.diagnose(batch.arrays, batch.lengths, train=True, rng=np.random.default_rng(0),
                                      carry=carry)
        if failure is not None:
            what, bad = what_and_bad(self.model, failure)
            raise TrainingError(f"{self._where(epoch)}: {what} produced {bad}; try a smaller learning rate, "
                                f"gradient clipping (clip 5) or input normalisation (normalize true)",
                                failure.span, sources_of(self.model))

    def _diagnose_nan(self, batch, carry, loss, grads, epoch: int) -> None:
        """The loss or the gradients' norm is not finite: name the value that went bad."""
        self._diagnose_forward(batch, carry, epoch)
        if not math.isfinite(loss):
            what = f"the loss {self._describe(self.model.plan.loss)}" if self.model.plan.loss else "the loss"
            raise TrainingError(f"{self._where(epoch)}: {what} became {'NaN' if math.isnan(loss) else 'infinite'}; "
                                f"try a smaller learning rate or gradient clipping (clip 5)")
        names = nonfinite_names(grads) or sorted(grads)
        raise TrainingError(f"{self._where(epoch)}: the gradient of parameter {self._describe(names[0])} became "
                            f"{what_is_bad(grads[names[0]])}; try a smaller learning rate or gradient clipping (clip 5)")

    def _bad_update(self, updated: list[str], epoch: int) -> None:
        """A parameter became NaN or infinite in the update: from a learning rate too large, most
        often, or from a gradient that was not finite. (The forward pass cannot be re-run to look:
        the parameters it ran with are gone; its loss was finite.)"""
        params = {k: self.model.params[k] for k in updated}
        names = nonfinite_names(params)
        if not names:
            return  # the sum overflowed, not the values: they are finite
        raise TrainingError(f"{self._where(epoch)}: the update made parameter {self._describe(names[0])} "
                            f"{what_is_bad(params[names[0]])} (learning rate {self.optimizer.lr:g}; its gradient "
                            f"or the step was too large); try a smaller learning rate or gradient clipping (clip 5)")

    # ---- the loop ---------------------------------------------------------------
    def fit(self) -> TrainResult:
        s = self.settings
        start = time.perf_counter()
        metric, higher = selection_metric(s, self.heads)
        unit = "tok" if self.data.stream else "ex"
        steps_per_epoch = self._steps_per_epoch()
        # compiled loop kernels from the first step or never, decided by the whole run's plan (from epoch
        # 0, as a resumed run plans it too), so that a resumed run rounds as the run it continues
        self.model.executor.settle_kernels(s.epochs * steps_per_epoch)
        converged = None
        epoch = self.start_epoch
        self._saved_at = None
        # BLAS on the executor's threads for the whole fit (evaluations too), not set and reset every epoch
        with self.progress(s.epochs, steps_per_epoch, unit=unit, quiet=self.quiet, stream=self.stream) as progress, \
                blas_threads(self.model.executor.options.blas_threads):
            try:
                for epoch in range(self.start_epoch, s.epochs):
                    progress.start_epoch(epoch + 1)
                    train_loss, mistakes = self._train_epoch(epoch, progress)
                    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self.optimizer.lr}
                    if s.rule == "perceptron":
                        row["train_mistakes"] = mistakes
                    if self.data.has("dev"):
                        try:
                            dev = self._evaluate_averaged("dev")
                        except RuntimeFailure as e:  # stopped as a bad step is, keeping what is safe
                            raise TrainingError(f"{self._where(epoch)}: {e}", e.span, e.sources) from None
                        row.update({f"dev_{k}": v for k, v in dev.metrics.items()})
                        score = dev.metrics.get(metric, dev.loss)
                    else:
                        score = -train_loss if higher else train_loss
                    better = self.best_score is None or (score > self.best_score if higher
                                                         else score < self.best_score)
                    if better and math.isfinite(score):
                        self.best_score, self.best_epoch, self.best_step = score, epoch + 1, self.step
                        self.best_params = {k: v.copy() for k, v in self._evaluated_weights().items()}
                    self.history.append(row)
                    if self.run_dir is not None:
                        self.run_dir.log_metrics(row)
                        if self._checkpoint_due(start):
                            self._checkpoint(epoch + 1)
                    progress.end_epoch(row)
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
                if self.history:
                    self._checkpoint(self.history[-1]["epoch"])
            except KeyboardInterrupt:
                self._keep_what_is_safe()
                raise TrainingInterrupted(str(self.run_dir.path) if self.run_dir else None,
                                          epoch + 1, self._epoch_on_disk()) from None
            except TrainingError:
                self._keep_what_is_safe()
                raise
            finally:
                if self.run_dir is not None:
                    self.run_dir.close()
        if self.best_params is not None and self.data.has("dev"):
            self._put(self.best_params)  # keep the best-dev epoch
        elif self.average is not None:
            self._put(self._evaluated_weights())  # the averages of the last epoch
        result = TrainResult(params=self.model.params, history=self.history, best_epoch=self.best_epoch,
                             best=dict(next((r for r in self.history if r.get("epoch") == self.best_epoch), {})),
                             converged=converged, epochs_run=len(self.history),
                             seconds=time.perf_counter() - start,
                             run_dir=str(self.run_dir.path) if self.run_dir else None)
        if self.data.has("test"):
            result.test = evaluate(self.model, self.data, "test", s).metrics
        return result

    def _put(self, weights: dict[str, np.ndarray]) -> None:
        """Make the model's parameters these weights, written into their arrays (see _evaluate_averaged)."""
        for k, v in weights.items():
            np.copyto(self.model.params[k], v)

    # ---- checkpoints ------------------------------------------------------------
    def _checkpoint_due(self, start: float) -> bool:
        now = time.perf_counter()
        if self._saved_at is None:
            return now - start >= min(FIRST_CHECKPOINT_SECONDS, self.checkpoint_seconds)
        return now - self._saved_at >= self.checkpoint_seconds

    def _checkpoint(self, epoch: int) -> None:
        """Make the disk hold the run as of the end of ``epoch``: its metrics rows, then best/
        (if it improved since it was last written), then last/. In that order a kill at any
        point leaves a state to resume from: rows beyond last/ are dropped on resume, and a
        best/ ahead of last/ is found again (see ``resume``)."""
        if self.run_dir is None or epoch == self.saved_epoch:
            return
        self.run_dir.flush(durable=True)
        self._save_best()
        self._save(self.run_dir.last, self.model.params, epoch, with_optimizer=True)
        self.saved_epoch = epoch
        self._saved_at = time.perf_counter()

    def _save_best(self) -> None:
        if self.run_dir is None or self.best_params is None or self.best_epoch == self.best_saved_epoch:
            return
        self._save(self.run_dir.best, self.best_params, self.best_epoch, with_optimizer=False)
        self.best_saved_epoch = self.best_epoch

    def _epoch_on_disk(self) -> int:
        """The epoch a resume would start from: what last/ on disk says (Ctrl-C can land in a save,
        after the new last/ is in place but before this process noted it)."""
        if self.run_dir is None:
            return 0
        for path in (self.run_dir.last, self.run_dir.path / ".last.old"):  # see checkpoint._tidy
            try:
                return int(json.loads((path / "meta.json").read_text(encoding="utf-8"))["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return 0

    def _keep_what_is_safe(self) -> None:
        """After a failure or Ctrl-C mid-epoch: the rows and the best weights so far (finite, from a
        finished epoch) go to disk; last/ keeps the previous checkpoint (the weights now are
        mid-epoch, or bad)."""
        if self.run_dir is None:
            return
        try:
            self.run_dir.flush(durable=True)
            self._save_best()
        except (OSError, TrainingError):
            pass  # the original error says more

    def _save(self, path, params: dict[str, np.ndarray], epoch: int, with_optimizer: bool) -> None:
        bad = nonfinite_names(params)
        if bad:  # never reached after the per-step checks; a checkpoint must never hold them
            raise TrainingError(f"refusing to save {path}: parameter {self._describe(bad[0])} is not finite")
        row = next((r for r in reversed(self.history) if r.get("epoch") == epoch), {})
        save_checkpoint(path, params, optimizer_state=self._training_state() if with_optimizer else None,
                        spec_hash=self.spec_hash, epoch=epoch, step=self.step if with_optimizer else self.best_step,
                        metrics={k: v for k, v in row.items() if isinstance(v, (int, float))},
                        rng=self.rng if with_optimizer else None, vocabs=self.data.vocab_json(),
                        norm_stats={k: v.to_json() for k, v in self.data.standardizers.items()},
                        extra={"best_score": self.best_score, "best_epoch": self.best_epoch})


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
