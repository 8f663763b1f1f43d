"""Cross-task reuse: which tasks are compared, and the numbers of a pair on hand-built logit differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interpipe.circuits.scoring import Scorer
from interpipe.circuits.discovery import chance_overlap
from interpipe.circuits.tables import TaskCircuit, reuse
from interpipe.components import Component
from interpipe.io import read_json

H = Component.head


class StubScorer(Scorer):
    """A held-out half whose logit difference under a circuit is a fixed row per circuit (by its first head)."""

    def __init__(self, clean_ld, rows: dict[Component, list[float]]):
        self.clean_ld = np.asarray(clean_ld, dtype=float)
        self.rows = rows
        self.components = [H(layer, head) for layer in range(10) for head in range(10)]  # a pool of 100 heads

    def circuits(self, circuits):
        return np.asarray([self.rows[c[0]] for c in circuits]), None


def test_whole_model_failed_and_unsolved_circuits_are_listed_not_compared(tmp_path):
    ioi = StubScorer([2.0, 4.0], {H(1, 0): [1.0, 2.0]})  # the SVA circuit keeps half of IOI's logit difference
    sva = StubScorer([1.0, 3.0], {H(0, 0): [1.0, 3.0]})  # the IOI circuit keeps all of SVA's
    found = {"ioi": TaskCircuit([H(0, 0), H(0, 1)], ioi), "sva": TaskCircuit([H(1, 0), H(0, 1), H(2, 2)], sva),
             "induction": TaskCircuit([H(9, 9)], StubScorer([1.0], {}), smaller_than_model=False),
             "laundry_list": TaskCircuit([H(0, 0)], StubScorer([1.0], {}), passed_heldout=False)}
    metrics = reuse(found, ["ioi", "sva", "induction", "laundry_list", "colored_objects"], tmp_path)
    overlap = read_json(tmp_path / "overlap.json")
    assert overlap["tasks"] == ["ioi", "sva"] and overlap["unsolved"] == ["colored_objects"]
    assert overlap["no_circuit_below_model"] == ["induction"] and overlap["failed_heldout"] == ["laundry_list"]
    assert overlap["heads"] == {"ioi": ["L0H0", "L0H1"], "sva": ["L1H0", "L0H1", "L2H2"]}
    assert not any("induction" in key or "laundry" in key for key in metrics)  # scored nowhere, compared with nothing
    assert metrics["reuse/ioi_on_sva/faithfulness"] == pytest.approx(1.0)  # (1 + 3) / (1 + 3)
    assert metrics["reuse/sva_on_ioi/faithfulness"] == pytest.approx(0.5)  # (1 + 2) / (2 + 4)
    assert metrics["reuse/ioi_sva/jaccard"] == pytest.approx(1 / 4)  # {L0H1} of {L0H0, L0H1, L1H0, L2H2}
    assert metrics["reuse/ioi_in_sva/containment"] == pytest.approx(1 / 2)
    assert metrics["reuse/sva_in_ioi/containment"] == pytest.approx(1 / 3)
    # beside each overlap, what random head sets of 2 and 3 of the 100 pool heads give
    assert metrics["reuse/ioi_in_sva/containment_chance"] == pytest.approx(3 / 100)
    assert metrics["reuse/sva_in_ioi/containment_chance"] == pytest.approx(2 / 100)
    assert metrics["reuse/ioi_sva/jaccard_chance"] == pytest.approx(chance_overlap(2, 3, 100)["jaccard"])
    table = pd.read_csv(tmp_path / "reuse.csv")
    assert set(table["circuit_of"]) == {"ioi", "sva"} and (table["pool_heads"] == 100).all()
    assert table["jaccard_chance"].tolist() == pytest.approx([chance_overlap(2, 3, 100)["jaccard"]] * 2)
