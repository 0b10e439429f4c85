"""nnspec in Jupyter (the ``notebook`` extra): the ``%%nnspec`` cell magic, the notebook progress
bar with live curves, and docs/tutorial.ipynb executed from top to bottom."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

IPython = pytest.importorskip("IPython", reason="the notebook extra (pip install -e '.[notebook]') is missing")

import nnspec  # noqa: E402

CHAIN = """input a; input b; input c
output L
L = c * (a + 2 * b)
"""


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.hist_file = ":memory:"      # nothing written to the user's home
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "nnspec")
    yield ip
    InteractiveShell.clear_instance()


def test_the_magic_draws_the_graph_with_values_and_gradients(shell):
    picture = shell.run_cell_magic("nnspec", "chain --at a=3 b=1 c=-2", CHAIN)
    assert picture.values["L"].item() == -10
    assert {n: picture.gradients[n].item() for n in "abc"} == {"a": -2, "b": -4, "c": 5}
    assert "∂ = 5" in picture._repr_svg_()
    assert isinstance(shell.user_ns["chain"], nnspec.Model)


def test_the_magic_binds_a_model_or_the_compiled_spec(shell):
    assert isinstance(shell.run_cell_magic("nnspec", "m", CHAIN), nnspec.Model)
    tagger = ("input w : seq of token\ntarget y : seq of class\noutput p\n"
              "p = softmax(V @ embed(w, 4) + c)\nloss cross_entropy(p, y)\n")
    assert isinstance(shell.run_cell_magic("nnspec", "", tagger), nnspec.Compiled)   # vocab(w) is open


def test_a_mistake_in_a_cell_shows_with_its_caret_and_no_traceback(shell, capsys):
    assert shell.run_cell_magic("nnspec", "broken", "input x[2]\noutput y[1]\ny = W @ xx\n") is None
    shown = capsys.readouterr().out      # a terminal shows the text; a notebook the same text in red
    assert "<cell>:3:9: error: undefined name 'xx'" in shown
    source, caret = shown.splitlines()[-2:]
    assert source.strip() == "y = W @ xx" and caret.index("^") == source.index("xx")
    assert "Traceback" not in shown and "broken" not in shell.user_ns
    assert shell.run_cell_magic("nnspec", "--at a=1", CHAIN) is None
    assert "needs a value for b, c" in capsys.readouterr().out


def test_the_magic_trains_a_spec_with_its_data(shell):
    spec = Path("specs/xor_train.nn").read_text().replace("epochs 2000", "epochs 300")
    session = shell.run_cell_magic("nnspec", "xor --run", spec)
    assert session is shell.user_ns["xor"]
    out = session.model.forward({"x": [[0, 0], [0, 1], [1, 0], [1, 1]]})["p"].ravel()
    assert (out > 0.5).tolist() == [False, True, True, False]


def test_the_magic_runs_a_spec_without_training_on_its_data(shell, capsys, monkeypatch):
    shown = []
    monkeypatch.setattr("nnspec.notebook.display", shown.append)
    session = shell.run_cell_magic("nnspec", "--run", Path("specs/xor_goodfellow.nn").read_text())
    assert isinstance(session, nnspec.Session)
    (table,) = shown
    cells = table.data.split("<td style='text-align:left'>")[1:]
    assert [c.split("<")[0] for c in cells] == ["[0, 0]", "0", "[0, 1]", "1", "[1, 0]", "1", "[1, 1]", "0"]


def test_the_notebook_progress_keeps_the_counters_of_the_terminal_one(monkeypatch):
    from nnspec.train import notebook_progress
    from nnspec.train.notebook_progress import NotebookProgress
    from nnspec.train.loop import Trainer
    assert notebook_progress.progress_class().__name__ == "Progress"   # not in a kernel here
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, display_id=None: _Handle(shown, obj))
    session = nnspec.open_session("specs/xor_train.nn", overrides=["epochs=30"])
    result = Trainer(session.model, session.data, session.settings, progress=NotebookProgress).fit()
    assert result.epochs_run == 30
    images = [o for o in shown if type(o).__name__ == "Image"]
    assert 2 <= len(images) < 30 and images[-1].data[:4] == b"\x89PNG"  # after epoch 1, then every 2 s, and the last
    bars = [o.data for o in shown if type(o).__name__ == "HTML" and "<progress" in o.data]
    assert "epoch 30/30" in bars[-1] and "loss" in bars[-1]


class _Handle:
    def __init__(self, shown, obj):
        self.shown = shown
        shown.append(obj)

    def update(self, obj):
        self.shown.append(obj)


def test_the_tutorial_runs_from_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    # a kernel of this very Python (with nnspec), whatever kernels the machine has installed
    kernel = tmp_path / "kernels" / "nnspec-tests"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nnspec tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    path = Path(__file__).parent.parent / "docs" / "tutorial.ipynb"
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="nnspec-tests",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    svgs = [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    assert svgs, "the tutorial draws graphs"
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "L = -10" in text
