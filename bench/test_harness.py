"""Harness plumbing, with a fake implementation (fast: no real timing)."""
import json


from bench import harness
from bench.configs import CONFIGS, activation_bytes, flops, make_batch
from bench.numpy_impl import build


class FakeImpl:
    """Plugs in like nnspec will: name + setup(config, dtype) -> step_fn."""

    name = "fake"
    traces_memory = True

    def __init__(self, loss_offset=0.0):
        self.loss_offset = loss_offset

    def setup(self, config, dtype):
        if config.kind == "mlp":
            raise NotImplementedError("no MLPs here")
        model = build(config, dtype)
        return lambda: model.step() + self.loss_offset


def test_run_suite_with_a_plugged_in_implementation(tmp_path):
    harness.register("fake", FakeImpl)
    harness.register("broken", "bench.no_such_module:Impl")
    try:
        report = harness.run_suite(["mlp", "lstm_tiny"], ["fake", "numpy", "broken"],
                                   repeats=2, warmup=1, min_sample_ms=0, settle_ms=0,
                                   peak=False, log=lambda *a: None)
    finally:
        del harness.REGISTRY["fake"], harness.REGISTRY["broken"]
    assert "broken" in report["skipped"]
    rows = {(r["config"], r["impl"]): r for r in report["results"]}
    assert "skipped" in rows["mlp", "fake"]
    tiny = rows["lstm_tiny", "fake"]
    assert len(tiny["samples_ms"]) == 2 and tiny["min_ms"] <= tiny["median_ms"] <= tiny["max_ms"]
    assert tiny["vs_numpy"] > 0 and tiny["vs_torch"] is None
    assert tiny["first_loss"] == rows["lstm_tiny", "numpy"]["first_loss"]
    assert tiny["memory"]["step_peak_bytes"] >= tiny["memory"]["held_bytes"] > 0
    assert harness.loss_mismatches(report) == []
    text = harness.format_table(report)
    assert "lstm_tiny" in text and "skipped fake on mlp: no MLPs here" in text
    json.dumps(report)  # --json must be able to write it


def test_loss_mismatch_is_reported():
    harness.register("off", lambda: FakeImpl(loss_offset=1.0))
    try:
        report = harness.run_suite(["lstm_tiny"], ["numpy", "off"], repeats=1, warmup=1,
                                   min_sample_ms=0, settle_ms=0, memory=False, peak=False,
                                   log=lambda *a: None)
    finally:
        del harness.REGISTRY["off"]
    assert len(harness.loss_mismatches(report)) == 1


def test_analytic_counts():
    # MLP: 3 x 2 x B x (784*256 + 256*256 + 256*10)
    assert flops(CONFIGS["mlp"]) == 3 * 2 * 64 * (784 * 256 + 256 * 256 + 256 * 10)
    lstm = CONFIGS["lstm"]  # 1120 positions x (x_emb 64 + h, c 128 each + gates 512 + probs 1000)
    assert activation_bytes(lstm) == 4 * 35 * 32 * (64 + 128 + 128 + 512 + 1000)
    x, y = make_batch(lstm)
    assert x.shape == y.shape == (35, 32) and (x[1:] == y[:-1]).all()  # next-token targets
