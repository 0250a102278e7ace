"""mg.to_dot / mg.draw: the picture of the graph, checked by its structure (no Graphviz needed)."""
import re
import shutil

import numpy as np
import pytest

import minigrad as mg
import minigrad.viz as viz

NODE = re.compile(r'^\s*n(\d+) \[label="((?:[^"\\]|\\.)*)"(.*)\];$', re.M)
EDGE = re.compile(r"^\s*n(\d+) -> n(\d+);$", re.M)


def parse(src):
    """DOT source -> ({node: label}, {node: attributes}, [(from, to), ...])."""
    labels, attrs = {}, {}
    for n, label, rest in NODE.findall(src):
        labels[int(n)] = label.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        attrs[int(n)] = rest
    edges = [(int(a), int(b)) for a, b in EDGE.findall(src)]
    return labels, attrs, edges


def lstm_loss(steps=3, unroll=True):
    mg.seed(0)
    lstm = mg.nn.LSTM(4, 3, unroll=unroll, dtype=np.float64)
    x = mg.Tensor(np.random.default_rng(1).standard_normal((2, steps, 4)))
    loss = (lstm(x) ** 2).mean()
    return lstm, loss


def test_unrolled_lstm_has_one_U_and_one_W_with_an_edge_to_every_steps_matmul():
    lstm, loss = lstm_loss(3, unroll=True)
    labels, attrs, edges = parse(mg.to_dot(loss, params=dict(lstm.named_parameters())))
    for name, shape in (("U", "(4, 12)"), ("W", "(3, 12)")):
        nodes = [n for n, lab in labels.items() if lab.split("\n")[0] == name]
        assert len(nodes) == 1, f"expected one {name} node, got {nodes}"
        (n,) = nodes
        assert labels[n] == f"{name}\n{shape}"
        assert "filled" in attrs[n]                              # highlighted as a parameter
        targets = [b for a, b in edges if a == n]
        assert len(targets) == 3
        assert sorted(labels[b] for b in targets) == ["matmul | t=0", "matmul | t=1", "matmul | t=2"]
    assert sum(lab.split("\n")[0] == "b" for lab in labels.values()) == 1


def test_node_and_edge_counts_match_the_graph():
    lstm, loss = lstm_loss(3, unroll=True)
    labels, _, edges = parse(mg.to_dot(loss))
    ops = [lab for lab in labels.values() if not lab.startswith(("Parameter", "("))]
    assert len(ops) == mg.graph_size(loss)
    assert len(labels) == mg.graph_size(loss) + 3                # + the leaves U, W, b
    # one edge per use: count every non-None parent of every node reachable from the loss
    seen, stack, uses = {id(loss)}, [loss], 0
    while stack:
        for p in stack.pop()._parents:
            if p is not None:
                uses += 1
                if id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
    assert len(edges) == uses
    # every tagged op sits in its timestep's frame
    src = mg.to_dot(loss)
    assert src.count("subgraph cluster_") == 3
    assert 'label="timestep 2"' in src


def test_parameters_are_detected_without_names():
    _, loss = lstm_loss(2, unroll=True)
    labels, attrs, _ = parse(mg.to_dot(loss))
    params = [n for n, lab in labels.items() if lab.startswith("Parameter\n")]
    assert sorted(labels[n] for n in params) == ["Parameter\n(12,)", "Parameter\n(3, 12)", "Parameter\n(4, 12)"]
    assert all("filled" in attrs[n] for n in params)
    plain = mg.Tensor(np.ones(3), requires_grad=True)            # a leaf that is not a Parameter
    labels, attrs, _ = parse(mg.to_dot((plain * 2).sum()))
    (leaf,) = [n for n, lab in labels.items() if lab == "(3,)"]
    assert "filled" not in attrs[leaf]


def test_a_module_can_name_its_parameters():
    model = mg.nn.Sequential(mg.nn.Linear(2, 3, dtype=np.float64), mg.nn.Tanh(), mg.nn.Linear(3, 1, dtype=np.float64))
    loss = model(mg.Tensor(np.ones((4, 2)))).sum()
    labels, _, _ = parse(mg.to_dot(loss, params=model))
    names = {lab.split("\n")[0] for lab in labels.values() if "\n" in lab and lab[0].isdigit()}
    assert names == {name for name, _ in model.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_looped_lstm_is_one_scan_node_whatever_the_length():
    sizes = []
    for steps in (3, 20):
        lstm, loss = lstm_loss(steps, unroll=False)
        labels, _, edges = parse(mg.to_dot(loss, params=lstm))
        scans = [n for n, lab in labels.items() if lab.startswith("scan")]
        assert len(scans) == 1
        (hub,) = scans
        assert labels[hub] == f"scan (loop over {steps} steps)"
        assert not any("scan.output" in lab for lab in labels.values())    # folded into edges
        into = sorted(labels[a].split("\n")[0] for a, b in edges if b == hub)
        assert into == ["U", "W", "b"]
        assert len([b for a, b in edges if a == hub]) == 1            # h_T feeds the loss once
        sizes.append((len(labels), len(edges)))
    assert sizes[0] == sizes[1]
    loss.backward()                       # frees the hub's closure: the drawing stays, the count goes
    labels, _, _ = parse(mg.to_dot(loss))
    assert "scan (loop)" in labels.values()


def test_a_scan_output_as_the_root_is_drawn_as_its_hub():
    mg.seed(0)
    lstm = mg.nn.LSTM(2, 2, dtype=np.float64)
    h = lstm(mg.Tensor(np.ones((1, 4, 2))))
    assert h.op == "scan.output"
    labels, attrs, edges = parse(mg.to_dot(h))
    assert labels[0] == "scan (loop over 4 steps)" and "peripheries=2" in attrs[0]
    assert len(labels) == 4 and len(edges) == 3


def test_the_walk_is_iterative():
    x = mg.Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y + 1.0
    labels, _, edges = parse(mg.to_dot(y))
    assert len(labels) == 20_001 and len(edges) == 20_000


def test_labels_are_escaped():
    p = mg.Tensor(np.ones(2), requires_grad=True)
    src = mg.to_dot((p * 3).sum(), params={'a "quoted" \\ name': p})
    labels, _, _ = parse(src)
    assert 'a "quoted" \\ name\n(2,)' in labels.values()


def test_draw_without_graphviz_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    _, loss = lstm_loss(2)
    with pytest.raises(RuntimeError, match=r"(?s)apt-get install graphviz.*to_dot"):
        mg.draw(loss, tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []
    # the DOT source itself needs no Graphviz
    out = mg.draw(loss, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == mg.to_dot(loss)
    assert out == str(tmp_path / "g.dot")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_renders_png_and_svg_atomically(tmp_path):
    lstm, loss = lstm_loss(3)
    mg.draw(loss, tmp_path / "g.png", params=lstm)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mg.draw(loss, tmp_path / "g.svg", params=lstm)
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "matmul | t=2" in svg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.svg"]    # no temporary files left
    with pytest.raises(RuntimeError, match="dot -Tnot-a-format"):
        mg.draw(loss, tmp_path / "g.bad", format="not-a-format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.svg"]


def test_to_dot_rejects_what_it_cannot_draw():
    with pytest.raises(TypeError, match="Tensor"):
        mg.to_dot(np.ones(2))
    with pytest.raises(ValueError, match="rankdir"):
        mg.to_dot(mg.Tensor(1.0), rankdir="sideways")
