"""Build the embedded task datasets and the toy model's training corpus.

Held-out (``test``) examples are generated first; training examples whose ``key`` (template
plus content words) occurs among them are rejected, so held-out prompts are new combinations
of template, names and objects that the toy model never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from interpipe.data import tasks, vocab

CAUSAL_TASKS = ("ioi", "sva", "colored_objects", "laundry_list", "induction")
ALL_TASKS = CAUSAL_TASKS + ("sentiment", "bigram_text")


@dataclass
class HubDataset:
    """A real dataset loaded with ``datasets.load_dataset`` and saved beside the generated tasks."""

    name: str  # hub name (e.g. stanfordnlp/sst2) or a local folder / file
    config: Optional[str] = None  # dataset configuration name
    split: str = "train"
    revision: Optional[str] = None  # pin a commit for exact reproducibility
    save_as: Optional[str] = None  # folder name under the data root; default: the name's last part


@dataclass
class PrepareSettings:
    """What to generate. Defaults are the embedded pipeline's small sizes."""

    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    n_train: int = 3000  # training examples per task (toy model corpus)
    # n_train multipliers of the tasks named (others: 1): the corpus mix. SVA is learned within a few
    # hundred steps, so it gets a sixth of the examples of the other causal tasks.
    n_train_scale: dict[str, float] = field(default_factory=lambda: {
        "ioi": 2.0, "sva": 0.34, "colored_objects": 2.0, "laundry_list": 2.0, "induction": 2.0})
    n_test: int = 64  # held-out examples per task (evaluation and studies)
    laundry_train_lengths: list[int] = field(default_factory=lambda: [2, 3, 4, 5])
    laundry_test_lengths: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    # Induction sequences vary in length so the repeat sits at no fixed offset: a fixed length lets
    # a model copy from position t - (length + 1) without any induction head.
    induction_seq_len: int = 12  # longest repeated sequence
    induction_min_len: int = 3  # shortest repeated sequence
    colored_objects_form: str = "inventory"  # or "question" (Merullo et al.'s wording; see tasks.colored_objects)
    corpus_tasks: list[str] = field(default_factory=lambda: list(CAUSAL_TASKS))  # what the toy model trains on
    hub: list[HubDataset] = field(default_factory=list)  # real datasets to fetch as well (none by default: offline)
    bigram_sentence_len: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("tasks", "corpus_tasks"):
            unknown = [t for t in getattr(self, key) if t not in tasks.GENERATORS]
            if unknown:
                raise ValueError(f"data.{key}: unknown task(s) {unknown}; choose from {sorted(tasks.GENERATORS)}")
        if self.colored_objects_form not in tasks.COLORED_OBJECTS_FORMS:
            raise ValueError(f"data.colored_objects_form={self.colored_objects_form!r}: "
                             f"choose from {list(tasks.COLORED_OBJECTS_FORMS)}")
        if self.n_train < 0:
            raise ValueError(f"data.n_train={self.n_train} must be >= 0")
        for task, scale in self.n_train_scale.items():
            if task not in tasks.GENERATORS or scale < 0:
                raise ValueError(f"data.n_train_scale.{task}={scale}: the key must be a task "
                                 f"({sorted(tasks.GENERATORS)}) and the multiplier >= 0")
        if self.bigram_sentence_len < 2:
            raise ValueError(f"data.bigram_sentence_len={self.bigram_sentence_len} must be >= 2 (a prompt and its answer)")
        if self.n_test < 1:
            raise ValueError(f"data.n_test={self.n_test}: n_test must be >= 1; every study evaluates on held-out prompts")
        if not 2 <= self.induction_min_len <= self.induction_seq_len:
            raise ValueError(f"data.induction_min_len={self.induction_min_len} and induction_seq_len="
                             f"{self.induction_seq_len} must satisfy 2 <= min <= max")
        lengths = list(self.laundry_train_lengths) + list(self.laundry_test_lengths)
        if not lengths or min(lengths) < 2 or max(lengths) > len(vocab.OBJECTS):
            raise ValueError(f"data.laundry_*_lengths={lengths}: list lengths must lie in "
                             f"2..{len(vocab.OBJECTS)} (the number of objects)")


def _generator(task: str, s: PrepareSettings, chain: dict, split: str):
    if task == "laundry_list":
        lengths = s.laundry_test_lengths if split == "test" else s.laundry_train_lengths
        return lambda rng: tasks.laundry_list(rng, n_items=rng.choice(lengths))
    if task == "induction":
        return lambda rng: tasks.induction(rng, seq_len=rng.randint(s.induction_min_len, s.induction_seq_len))
    if task == "colored_objects":
        return lambda rng: tasks.colored_objects(rng, form=s.colored_objects_form)
    if task == "bigram_text":
        return lambda rng: tasks.bigram_text(rng, chain, length=s.bigram_sentence_len)
    if task not in tasks.GENERATORS:
        raise ValueError(f"unknown task {task!r}: choose from {sorted(tasks.GENERATORS)}")
    return tasks.GENERATORS[task]


def generate_split(task: str, n: int, rng: random.Random, make, exclude: set[str],
                   max_tries_per_example: int = 200) -> list[dict]:
    """Draw ``n`` examples with distinct keys not in ``exclude``."""
    seen: set[str] = set(exclude)
    rows: list[dict] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > max_tries_per_example * max(n, 1):
            raise RuntimeError(f"task {task!r}: could only draw {len(rows)} distinct examples of {n}; "
                               f"lower n_train/n_test or widen the word lists")
        row = make(rng)
        if row["key"] in seen:
            continue
        seen.add(row["key"])
        row["task"] = task
        row["example_id"] = f"{task}-{len(rows):05d}"
        rows.append(row)
    return rows


def generate_task(task: str, s: PrepareSettings) -> dict[str, list[dict]]:
    """Generate the ``test`` then the ``train`` split of one task."""
    chain = tasks.make_bigram_chain(s.seed)
    rng = random.Random(f"{s.seed}-{task}")
    test = generate_split(task, s.n_test, rng, _generator(task, s, chain, "test"), set())
    n_train = round(s.n_train * s.n_train_scale.get(task, 1.0))
    train = generate_split(task, n_train, rng, _generator(task, s, chain, "train"), {r["key"] for r in test})
    return {"train": train, "test": test}


def corpus_text(row: dict) -> str:
    """The training text for one example: the prompt followed by its answer."""
    return f"{row['prompt']} {row['answer']}"


def prepare_all(out_dir: str | Path, s: PrepareSettings) -> dict[str, int]:
    """Generate every task and the training corpus into ``out_dir`` (one folder per task).

    Returns the number of examples per task and split.
    """
    import datasets
    from datasets import Dataset, DatasetDict

    from interpipe.io import atomic_dir, write_json

    datasets.disable_progress_bars()  # one bar over tasks is enough
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    # vocab_only: texts of tasks the toy model does not train on, so its tokenizer still covers them
    corpus: dict[str, list[dict]] = {"train": [], "validation": [], "vocab_only": []}
    for task in tqdm(s.tasks, desc="prepare tasks"):
        splits = generate_task(task, s)
        with atomic_dir(out_dir / task) as tmp:
            DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(tmp))
        for split, rows in splits.items():
            counts[f"{task}/{split}"] = len(rows)
        if task in s.corpus_tasks:
            corpus["train"] += [{"text": corpus_text(r), "task": task} for r in splits["train"]]
            corpus["validation"] += [{"text": corpus_text(r), "task": task} for r in splits["test"]]
        else:
            corpus["vocab_only"] += [{"text": corpus_text(r), "task": task} for r in splits["train"] + splits["test"]]
    for hub in s.hub:
        from interpipe.data.store import load_hub_dataset

        rows = load_hub_dataset(hub.name, hub.config, hub.split, hub.revision)
        folder = hub.save_as or Path(hub.name.rstrip("/")).name
        with atomic_dir(out_dir / "hub" / folder) as tmp:
            rows.save_to_disk(str(tmp))
        counts[f"hub/{folder}"] = len(rows)
    random.Random(s.seed).shuffle(corpus["train"])
    with atomic_dir(out_dir / "corpus") as tmp:
        DatasetDict({k: Dataset.from_list(v) for k, v in corpus.items()}).save_to_disk(str(tmp))
    counts["corpus/train"] = len(corpus["train"])
    counts["corpus/validation"] = len(corpus["validation"])
    write_json(out_dir / "manifest.json", {"counts": counts, "tasks": s.tasks, "seed": s.seed})
    return counts
