"""Pictures for notebooks: the graph drawn as SVG without Graphviz, with values and gradients
on its nodes; compiled specs and models show a table and their graph."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import nnspec
from nnspec.display import layout

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    return [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_the_lectures_graph_shows_its_values_and_gradients():
    model = nnspec.Model.from_file("specs/chain_rule.nn", dtype=np.float64)
    picture = model.draw(at={"a": 3, "b": 1, "c": -2})
    assert picture.values["L"].item() == -10
    assert {n: picture.gradients[n].item() for n in "abc"} == {"a": -2, "b": -4, "c": 5}
    shown = texts(picture._repr_svg_())          # well-formed SVG, or ElementTree raises
    for line in ["L", "= -10", "∂ = 1", "a", "= 3", "∂ = -2", "b", "∂ = -4", "c", "∂ = 5", "= 5"]:
        assert line in shown, line


@pytest.mark.parametrize("spec", ["specs/xor_goodfellow.nn", "specs/elman.nn", "specs/lstm_from_gates.nn"])
def test_every_link_goes_upward_and_no_two_nodes_overlap(spec):
    pic = nnspec.compile_file(spec).draw().picture
    boxes, width, height = layout(pic)
    for e in pic.edges:
        if not e.delay:
            assert boxes[e.target].y < boxes[e.source].y, (e.source, e.target)   # operands below
    placed = list(boxes.values())
    for i, a in enumerate(placed):
        assert 0 <= a.x - a.width / 2 and a.x + a.width / 2 <= width and a.y + a.height / 2 <= height
        for b in placed[i + 1:]:
            apart = abs(a.x - b.x) >= (a.width + b.width) / 2 or abs(a.y - b.y) >= (a.height + b.height) / 2
            assert apart, (a.node.id, b.node.id)


def test_an_unrolled_drawing_has_a_column_a_time_step_in_one_order():
    pic = nnspec.compile_file("specs/elman.nn").draw(unroll=3).picture
    boxes, _, _ = layout(pic)
    assert pic.clusters == {1: "t = 1", 2: "t = 2", 3: "t = 3"}
    right_of = {t: max(b.x for b in boxes.values() if b.node.cluster == t) for t in (1, 2, 3)}
    left_of = {t: min(b.x for b in boxes.values() if b.node.cluster == t) for t in (1, 2, 3)}
    assert right_of[1] < left_of[2] and right_of[2] < left_of[3]
    assert boxes["h@2"].x - boxes["e@2"].x == pytest.approx(boxes["h@1"].x - boxes["e@1"].x)
    assert any(e.source == "h@1" and e.target.endswith("@2") and e.delay == -1 for e in pic.edges)   # h[t-1]
    assert "t = 3" in texts(nnspec.compile_file("specs/elman.nn").draw(unroll=3).svg())


def test_a_compiled_spec_and_a_model_show_a_table_and_their_graph():
    compiled = nnspec.compile_file("specs/lstm_tagger.nn")
    shown = compiled._repr_html_()
    assert "<table>" in shown and "<svg" in shown and "recurrent" in shown
    assert "<td style='text-align:left'>V</td>" in shown            # a parameter row
    model = nnspec.Model.from_file("specs/xor_goodfellow.nn")
    shown = model._repr_html_()
    assert "9 parameters" in shown and "[1, 1, 1, 1]" in shown and "<svg" in shown


def test_the_core_and_its_pictures_need_no_jupyter():
    code = ("import sys; sys.modules['IPython'] = None; sys.modules['ipywidgets'] = None\n"
            "import nnspec, nnspec.display\n"
            "nnspec.compile_file('specs/elman.nn')._repr_html_()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


TINY_ELMAN = """network tiny_elman
input  x[1] : seq
output y[1]
h[2] = tanh(W @ x + U @ h[t-1] + b)
y = v @ h
param W = [[1], [0.5]]
param U = [[0.5, 0], [0, 0.5]]
param b = [0, 0]
param v = [[1, -1]]
"""


def test_a_sequence_is_drawn_unrolled_with_each_steps_values_and_gradients():
    model = nnspec.Model.from_text(TINY_ELMAN, dtype=np.float64)
    xs = [[1.0], [0.5], [-1.0]]
    picture = model.draw(at={"x": xs})
    assert picture.picture.clusters == {1: "t = 1", 2: "t = 2", 3: "t = 3"}
    h1 = np.tanh([1.0, 0.5])
    h2 = np.tanh(np.array([0.5, 0.25]) + 0.5 * h1)
    assert np.allclose(picture.values["h"][:2], [h1, h2])
    assert np.allclose(picture.gradients["h"][2], [1, -1])       # y at the last step reads h through v
    # the same gradients as the fast runtime gives for the sum of the outputs over time
    _, grads = model.gradients({"x": np.array(xs)[:, None, :]}, of="y")
    for name in ("W", "U", "b", "v"):
        assert np.allclose(picture.gradients[name], grads[name]), name
    labels = {n.id: n.lines for n in picture.picture.nodes}
    assert f"= [{h1[0]:.3g}, {h1[1]:.3g}]" in labels["h@1"] and "∂ = [1, -1]" in labels["h@3"]
    assert model.draw(at={"x": xs}, unroll=2).picture.clusters == {1: "t = 1", 2: "t = 2"}
