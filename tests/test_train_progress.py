"""Progress display: plain lines off a terminal, nothing when quiet."""
import io
import re
import time

from nnspec.train.progress import Progress

LINE = re.compile(r"^epoch (\d+)/3  loss (\d+\.\d{4})  dev_acc 0\.8123  [\d.,]+ ex/s  \d+\.\ds$")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_one_line_per_epoch():
    out = io.StringIO()
    with Progress(3, steps_per_epoch=4, unit="ex", stream=out) as p:
        for e in range(1, 4):
            p.start_epoch(e)
            for _ in range(4):
                p.step(32, 0.5)
            p.step(16, 2.0)  # the loss is a mean weighted by examples: (4*32*.5 + 16*2) / 144
            p.end_epoch({"dev_acc": 0.8123})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    for e, line in enumerate(lines, 1):
        m = LINE.match(line)
        assert m, line
        assert int(m.group(1)) == e and m.group(2) == "0.6667"


def test_tokens_unit_and_metrics_formatting():
    out = io.StringIO()
    with Progress(10, unit="tok", stream=out) as p:
        p.start_epoch(1)
        p.step(1000)
        line = p.end_epoch({"dev_ppl": 12.5, "train_loss": 3.0, "best": True})
    assert out.getvalue() == line + "\n"
    assert line.startswith("epoch 1/10  dev_ppl 12.5000  train_loss 3.0000  best True  ")
    assert re.search(r" [\d.,]+ tok/s  \d+\.\ds$", line)


def test_quiet_prints_nothing():
    out = FakeTTY()
    with Progress(2, 3, quiet=True, stream=out) as p:
        p.start_epoch(1)
        p.step(8, 1.0)
        p.end_epoch({"dev_acc": 0.5})
        p.print("saved")
    assert out.getvalue() == ""


def test_terminal_bar_runs_and_keeps_summaries():
    out = FakeTTY()
    with Progress(2, steps_per_epoch=50, stream=out, refresh_interval=0.0) as p:
        for e in (1, 2):
            p.start_epoch(e)
            for _ in range(50):
                p.step(10, 0.25)
            p.end_epoch({"dev_acc": 0.9})
    text = out.getvalue()
    assert "epoch 1/2  loss 0.2500  dev_acc 0.9000" in text
    assert "epoch 2/2" in text


def test_step_is_cheap():
    with Progress(1, steps_per_epoch=20000, stream=FakeTTY()) as p:
        p.start_epoch(1)
        t0 = time.perf_counter()
        for _ in range(20000):
            p.step(32, 0.5)
        elapsed = time.perf_counter() - t0
        p.end_epoch()
    assert elapsed < 1.0  # ~a few microseconds per step when refreshes are throttled
