"""Components as values: the one textual form and its parser, ordering, hashing, the weights tables' form."""

from __future__ import annotations

import pytest

from interpipe.components import Component, heads_of

EVERY_KIND = [(Component.head(2, 3), "L2H3"), (Component.mlp(2), "L2.mlp"), (Component.neuron(2, 17), "L2.n17"),
              (Component.head(0, 0), "L0H0"), (Component.head(11, 10), "L11H10"), (Component.neuron(0, 3071), "L0.n3071")]


@pytest.mark.parametrize("component, text", EVERY_KIND)
def test_name_and_parse_round_trip(component, text):
    assert str(component) == component.name == text
    assert Component.parse(text) == component
    assert Component.parse(f"  {text}\n") == component  # surrounding whitespace (a YAML value) is ignored


def test_constructors_match_the_fields():
    assert Component.head(1, 2) == Component("head", 1, 2)
    assert Component.mlp(4) == Component("mlp", 4) == Component("mlp", 4, -1)
    assert Component.neuron(3, 7) == Component("neuron", 3, 7)
    assert (Component.head(1, 2).layer, Component.head(1, 2).index, Component.head(1, 2).kind) == (1, 2, "head")


def test_order_is_layer_then_head_mlp_neuron_then_index():
    shuffled = [Component.neuron(1, 0), Component.mlp(0), Component.head(1, 2), Component.head(0, 3),
                Component.mlp(1), Component.head(1, 0), Component.neuron(0, 5), Component.head(0, 10)]
    assert [c.name for c in sorted(shuffled)] == ["L0H3", "L0H10", "L0.mlp", "L0.n5", "L1H0", "L1H2", "L1.mlp",
                                                  "L1.n0"]
    assert Component.head(0, 10) > Component.head(0, 9)  # by index, not by the text
    assert Component.mlp(0) < Component.head(1, 0) and Component.head(0, 0) <= Component.head(0, 0)


def test_hashing_and_equality():
    a, b = Component.head(1, 2), Component.parse("L1H2")
    assert a == b and hash(a) == hash(b) and a is not b
    assert len({a, b, Component.mlp(1), Component.neuron(1, 2)}) == 3  # head 2 and neuron 2 differ
    assert {a: "x"}[b] == "x"
    assert Component.head(1, 2) != "L1H2"  # a component is not its name
    with pytest.raises(AttributeError):
        a.layer = 3  # frozen


@pytest.mark.parametrize("bad", ["", "H3", "L2", "L2H", "LxH3", "l2h3", "L2.MLP", "L2.attn_bias", "L-1H2", "2.3.1",
                                 "L2H3 L4H5", "embed", "3.1"])
def test_bad_text_names_the_accepted_forms(bad):
    with pytest.raises(ValueError) as raised:
        Component.parse(bad)
    message = str(raised.value)
    assert repr(bad.strip()) in message
    for form in ("L<layer>H<head>", "L<layer>.mlp", "L<layer>.n<neuron>"):
        assert form in message


@pytest.mark.parametrize("kind, layer, index", [("attn", 0, 0), ("head", -1, 0), ("head", 0, -1), ("mlp", 0, 3),
                                                ("neuron", 1, -1)])
def test_invalid_fields_are_refused(kind, layer, index):
    with pytest.raises(ValueError, match="component"):
        Component(kind, layer, index)


def test_heads_of():
    mixed = [Component.parse(name) for name in ["L0H1", "L0.mlp", "L1.n2", "L1H0"]]
    assert mixed == [Component.head(0, 1), Component.mlp(0), Component.neuron(1, 2), Component.head(1, 0)]
    assert heads_of(mixed) == [Component.head(0, 1), Component.head(1, 0)]


def test_circuits_ablation_still_exports_component():
    from interpipe.circuits import Component as from_package
    from interpipe.circuits.ablation import Component as from_ablation

    assert from_package is from_ablation is Component
