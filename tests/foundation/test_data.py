"""The task generators produce correct answers, aligned corruptions and held-out splits."""

from __future__ import annotations

import random

import pytest

from interpipe.data import ALL_TASKS, CAUSAL_TASKS, PrepareSettings, load_task
from interpipe.data import tasks as T
from interpipe.data.prepare import generate_task


def _words(text):
    return text.split()


@pytest.mark.parametrize("seed", range(20))
def test_ioi_answer_is_the_name_mentioned_once(seed):
    row = T.ioi(random.Random(seed))
    words = _words(row["prompt"])
    assert words.count(row["answer"]) == 1 and words.count(row["foil"]) == 2
    # ABC corruption: S2 replaced by a third name, same length, answer name still once
    cw = _words(row["corrupted_prompt"])
    assert len(cw) == len(words)
    assert sum(a != b for a, b in zip(words, cw)) == 1
    assert cw.count(row["foil"]) == 1


@pytest.mark.parametrize("seed", range(20))
def test_sva_verb_agrees_with_subject_not_attractor(seed):
    row = T.sva(random.Random(seed))
    subject = row["prompt"][slice(*row["cue_spans"][0])]
    plural = subject.endswith("s")
    assert row["answer"] == ("are" if plural else "is")
    assert row["corrupted_answer"] == row["foil"]


@pytest.mark.parametrize("seed", range(20))
def test_colored_objects_answer_is_the_queried_objects_color(seed):
    row = T.colored_objects(random.Random(seed), form="question")
    words = _words(row["prompt"])
    queried = words[-2]  # "... What color is the <obj> ?"
    assert words.count(queried) == 2
    assert words[words.index(queried) - 1] == row["answer"]  # "a <color> <obj>"
    row = T.colored_objects(random.Random(seed), form="inventory")
    words = _words(row["prompt"])
    queried = words[-1]  # "... . The <obj>"
    assert words.count(queried) == 2
    assert words[words.index(queried) + 1] == row["answer"]  # "<obj> <color>"
    corrupted = _words(row["corrupted_prompt"])
    assert len(corrupted) == len(words) and corrupted[words.index(corrupted[-1]) + 1] == row["corrupted_answer"]
    assert row["corrupted_answer"] != row["answer"]


def test_corpus_mix_scales_n_train_per_task():
    s = PrepareSettings(n_train=10, n_test=2, n_train_scale={"sva": 0.5, "induction": 3.0})
    assert len(generate_task("sva", s)["train"]) == 5
    assert len(generate_task("induction", s)["train"]) == 30
    assert len(generate_task("ioi", s)["train"]) == 10


def test_induction_repeats_sit_at_varying_offsets():
    """With a fixed sequence length the answer would sit at a fixed offset back: no induction needed."""
    rows = generate_task("induction", PrepareSettings(n_train=0, n_test=200))["test"]
    offsets = set()
    for row in rows:
        first, second = row["prompt"].split(" | ")
        offsets.add(len(first.split()) + 1)
    assert len(offsets) >= 5


@pytest.mark.parametrize(("override", "message"), [
    ({"colored_objects_form": "riddle"}, "colored_objects_form='riddle': choose from"),
    ({"tasks": ["ioi", "iol"]}, r"unknown task\(s\) \['iol'\]"),
    ({"induction_min_len": 9, "induction_seq_len": 4}, "induction_min_len=9"),
    ({"laundry_test_lengths": [2, 40]}, "list lengths must lie in"),
    ({"n_train": -1}, "n_train=-1"),
    ({"n_train_scale": {"svaa": 2.0}}, "n_train_scale.svaa=2.0: the key must be a task"),
])
def test_bad_prepare_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        PrepareSettings(**override)


@pytest.mark.parametrize("n_items", [2, 4, 6])
def test_laundry_list_answer_is_the_item_not_taken_out(n_items):
    row = T.laundry_list(random.Random(n_items), n_items)
    listed, taken = row["prompt"].split(". I took out")
    assert row["answer"] in listed and row["answer"] not in taken
    assert row["n_items"] == n_items
    assert len(_words(row["corrupted_prompt"])) == len(_words(row["prompt"]))


def test_induction_answer_continues_the_repeat():
    row = T.induction(random.Random(0), seq_len=8)
    first, second = row["prompt"].split(" | ")
    first, second = first.split(), second.split()
    assert first[len(second)] == row["answer"]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_cue_spans_point_at_words_of_the_prompt(task):
    splits = generate_task(task, PrepareSettings(n_train=20, n_test=20))
    for row in splits["test"]:
        for start, end in row["cue_spans"]:
            cue = row["prompt"][start:end]
            assert cue and " " not in cue and cue in row["prompt"].split()


@pytest.mark.parametrize("task", CAUSAL_TASKS)
def test_held_out_keys_never_in_training(task):
    splits = generate_task(task, PrepareSettings(n_train=300, n_test=30))
    train_keys = {r["key"] for r in splits["train"]}
    assert not train_keys & {r["key"] for r in splits["test"]}
    train_prompts = {r["prompt"] for r in splits["train"]}
    assert not train_prompts & {r["prompt"] for r in splits["test"]}


def test_same_seed_same_data_other_seed_other_data():
    a = generate_task("ioi", PrepareSettings(n_train=10, n_test=5, seed=1))
    b = generate_task("ioi", PrepareSettings(n_train=10, n_test=5, seed=1))
    c = generate_task("ioi", PrepareSettings(n_train=10, n_test=5, seed=2))
    assert a == b and a != c


def test_saved_datasets_load_back(data_root):
    rows = load_task(data_root, "ioi", "test")
    assert len(rows) == 8 and set(rows.column_names) >= {"prompt", "answer", "foil", "corrupted_prompt", "cue_spans"}


def test_missing_and_empty_data_give_clear_errors(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="prepare stage"):
        load_task(tmp_path, "ioi")
    with pytest.raises(ValueError, match="n_test must be >= 1"):
        PrepareSettings(n_test=0)
    with pytest.raises(ValueError, match="unknown task"):
        generate_task("nonsense", PrepareSettings())


def test_hub_datasets_load_from_local_folders_and_fail_fast_offline(tmp_path, monkeypatch):
    import time

    from interpipe.data import load_hub_dataset
    from interpipe.data.prepare import HubDataset
    from interpipe.hub import HubUnreachableError

    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    s = PrepareSettings(tasks=["ioi"], n_train=5, n_test=2, hub=[HubDataset(name=str(folder))])
    from interpipe.data import prepare_all

    counts = prepare_all(tmp_path / "out", s)
    assert counts["hub/mydata"] == 2
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "out" / "hub" / "mydata"))["text"] == ["good film", "bad film"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="local folder|model.source|unreachable"):
        load_hub_dataset("no-such-org/no-such-dataset-xyz")
    assert time.perf_counter() - start < 15
