"""Generators for the embedded tasks.

Every example is one flat record (Arrow-friendly) with:

- ``prompt`` – the text fed to the model; the ``answer`` is the next word (for causal LMs
  it follows after one space), ``foil`` the competing wrong word;
- ``corrupted_prompt`` / ``corrupted_answer`` – a counterpart that tokenizes to the same
  length in the toy tokenizer (one word swapped) and removes the information the clean
  answer depends on, for activation patching;
- ``cue_spans`` – character spans ``[start, end)`` in ``prompt`` of the gold cue words (for
  attribution plausibility);
- ``label`` – the class for classification tasks, ``-1`` otherwise;
- ``n_items`` – list length for Laundry List, 0 otherwise;
- ``key`` – the combination of template and content words; held-out examples' keys never
  occur in the training split.

Tasks: ``ioi`` (Wang et al. 2022, ABBA/BABA with ABC corruptions), ``sva`` (subject-verb
agreement across an attractor), ``colored_objects`` (after Merullo et al. 2023),
``laundry_list`` (recall the one item of a list that was not repeated; Merullo et al. 2024),
``induction`` (repeated random word sequences), ``sentiment`` (classification with planted
cue words) and ``bigram_text`` (text from a peaked word-level Markov chain).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from interpipe.data import vocab


@dataclass
class _PromptBuilder:
    """Appends words separated by single spaces and remembers the spans of marked words."""

    words: list[str] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)
    length: int = 0

    def add(self, text: str, cue: bool = False) -> "_PromptBuilder":
        for word in text.split():
            start = self.length + (1 if self.words else 0)
            self.words.append(word)
            self.length = start + len(word)
            if cue:
                self.spans.append([start, self.length])
        return self

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _record(key: str, prompt: _PromptBuilder, answer: str, foil: str, corrupted: str,
            corrupted_answer: str, label: int = -1, n_items: int = 0) -> dict:
    return {
        "key": key,
        "prompt": prompt.text,
        "answer": answer,
        "foil": foil,
        "corrupted_prompt": corrupted,
        "corrupted_answer": corrupted_answer,
        "cue_spans": prompt.spans,
        "label": label,
        "n_items": n_items,
    }


IOI_TEMPLATES = (
    "When {A} and {B} went to the {place} , {S} gave a {thing} to",
    "Then , {A} and {B} had a long talk at the {place} . {S} gave a {thing} to",
    "After {A} and {B} went to the {place} , {S} handed a {thing} to",
    "While {A} and {B} were working at the {place} , {S} gave a {thing} to",
    "Friends {A} and {B} found a {thing} at the {place} . {S} gave it to",
    "When {A} and {B} got a {thing} at the {place} , {S} decided to give it to",
)


def ioi(rng: random.Random) -> dict:
    """One IOI prompt: ABBA or BABA order, corrupted by replacing S2 with a third name (ABC)."""
    t = rng.randrange(len(IOI_TEMPLATES))
    io, s, c = rng.sample(vocab.NAMES, 3)
    place, thing = rng.choice(vocab.PLACES), rng.choice(vocab.THINGS)
    abba = rng.random() < 0.5
    first, second = (io, s) if abba else (s, io)
    b = _PromptBuilder()
    template = IOI_TEMPLATES[t]
    head, tail = template.split("{S}")
    for token in head.split():
        if token in ("{A}", "{B}"):
            name = first if token == "{A}" else second
            b.add(name, cue=name == io)
        else:
            b.add(token.format(place=place, thing=thing))
    b.add(s, cue=True)  # S2: the repeated name tells which one is the subject
    b.add(tail.format(place=place, thing=thing))
    corrupted = b.text[: b.spans[-1][0]] + c + b.text[b.spans[-1][1]:]
    key = f"ioi|{t}|{'-'.join(sorted((io, s)))}|{place}|{thing}"
    return _record(key, b, io, s, corrupted, io)


SVA_TEMPLATES = ("The {adj} {subj} {prep} the {attr}", "The {subj} {prep} the {adj} {attr}")


def sva(rng: random.Random) -> dict:
    """Subject-verb agreement with an attractor of the other number; corrupted flips the subject."""
    t = rng.randrange(len(SVA_TEMPLATES))
    (subj_sg, subj_pl), (attr_sg, attr_pl) = rng.sample(vocab.NOUN_PAIRS, 2)
    plural = rng.random() < 0.5
    subj, attr = (subj_pl, attr_sg) if plural else (subj_sg, attr_pl)
    other_subj = subj_sg if plural else subj_pl
    prep, adj = rng.choice(vocab.PREPOSITIONS), rng.choice(vocab.ADJECTIVES)
    verb, foil = ("are", "is") if plural else ("is", "are")
    b = _PromptBuilder()
    for token in SVA_TEMPLATES[t].split():
        if token == "{subj}":
            b.add(subj, cue=True)
        else:
            b.add(token.format(adj=adj, prep=prep, attr=attr))
    start, end = b.spans[0]
    corrupted = b.text[:start] + other_subj + b.text[end:]
    key = f"sva|{t}|{subj}|{attr}|{prep}|{adj}"
    return _record(key, b, verb, foil, corrupted, foil)


COLORED_OBJECTS_FORMS = ("inventory", "question")


def colored_objects(rng: random.Random, form: str = "inventory") -> dict:
    """Three coloured objects, then one of them again; the answer is its colour.

    ``question`` is Merullo et al. (2023)'s form, colour before object: "On the table , I see a
    red hat , a blue pen , and a green cup . What color is the pen ?" -> "blue". The colour has to
    be moved onto its object before it can be looked up (V-composition with a previous-token head).
    ``inventory`` lists each object before its colour: "On the table , I see : hat red , pen
    blue , and cup green . The pen" -> "blue", an induction-style lookup (K-composition). The toy
    model learns the inventory form within the default training budget and stays at chance on
    the question form; pretrained models handle both. Corrupted: another of the three objects is
    asked about.
    """
    if form not in COLORED_OBJECTS_FORMS:
        raise ValueError(f"unknown colored_objects form {form!r}: choose from {COLORED_OBJECTS_FORMS}")
    objects = rng.sample(vocab.OBJECTS, 3)
    colors = rng.sample(vocab.COLORS, 3)
    q, other = rng.sample(range(3), 2)
    b = _PromptBuilder().add("On the table , I see" + (" :" if form == "inventory" else ""))
    for i, (color, obj) in enumerate(zip(colors, objects)):
        if i > 0:
            b.add(", and" if i == 2 else ",")
        if form == "inventory":
            b.add(obj, cue=i == q)
            b.add(color, cue=i == q)
        else:
            b.add("a")
            b.add(color, cue=i == q)
            b.add(obj, cue=i == q)
    b.add(". The" if form == "inventory" else ". What color is the")
    b.add(objects[q], cue=True)
    if form == "question":
        b.add("?")
    start, end = b.spans[-1]
    corrupted = b.text[:start] + objects[other] + b.text[end:]
    key = f"colored|{form}|{'-'.join(objects)}|{'-'.join(colors)}|{q}"
    return _record(key, b, colors[q], colors[other], corrupted, colors[other])


def laundry_list(rng: random.Random, n_items: int) -> dict:
    """A list of ``n_items`` objects; all but one are taken out again; answer: the one left.

    Corrupted: the missing item is taken out too, in place of one of the others, so no item
    is left unambiguously.
    """
    items = rng.sample(vocab.OBJECTS, n_items)
    missing = rng.randrange(n_items)
    b = _PromptBuilder().add("The bag has")
    for i, item in enumerate(items):
        if i > 0:
            b.add("and" if i == n_items - 1 else ",")
        b.add("a")
        b.add(item, cue=i == missing)
    b.add(". I took out the")
    taken = [items[i] for i in range(n_items) if i != missing]
    rng.shuffle(taken)
    for i, item in enumerate(taken):
        if i > 0:
            b.add("and the")
        b.add(item, cue=False)
    b.add("and kept the")
    prompt_words = b.text
    # Replace the first taken-out item with the missing one: nothing is left unambiguously.
    taken_start = prompt_words.index(". I took out the ") + len(". I took out the ")
    corrupted = prompt_words[:taken_start] + items[missing] + prompt_words[taken_start + len(taken[0]):]
    key = f"laundry|{n_items}|{'-'.join(items)}|{missing}"
    return _record(key, b, items[missing], taken[0], corrupted, taken[0], n_items=n_items)


INDUCTION_POOL = vocab.OBJECTS + vocab.COLORS + vocab.THINGS + vocab.PLACES


def induction(rng: random.Random, seq_len: int = 8) -> dict:
    """A random word sequence followed by a partial repeat; the answer is the next word.

    Corrupted: the first occurrence of the sequence is replaced by fresh random words, so
    there is nothing to copy.
    """
    pool = sorted(set(INDUCTION_POOL))
    seq = rng.sample(pool, seq_len)
    k = rng.randrange(max(1, seq_len // 2), seq_len)
    answer = seq[k]
    foil = rng.choice([w for w in pool if w not in seq])
    b = _PromptBuilder()
    for i, word in enumerate(seq):
        b.add(word, cue=i == k)
    b.add("|")
    b.add(" ".join(seq[:k]))
    fresh = rng.sample([w for w in pool if w not in seq], seq_len)
    corrupted = " ".join(fresh) + " | " + " ".join(seq[:k])
    key = f"induction|{'-'.join(seq)}|{k}"
    return _record(key, b, answer, foil, corrupted, foil)


def sentiment(rng: random.Random) -> dict:
    """A review with one or two planted sentiment cue words; label 1 = positive."""
    positive = rng.random() < 0.5
    cues = vocab.POSITIVE if positive else vocab.NEGATIVE
    topic, aspect = rng.choice(vocab.TOPICS), rng.choice(vocab.ASPECTS)
    b = _PromptBuilder().add(f"the {topic} was {rng.choice(vocab.NEUTRAL)} and the {aspect} was")
    first = rng.choice(cues)
    b.add(first, cue=True)
    second = None
    if rng.random() < 0.5:
        second = rng.choice(cues)
        b.add("and really")
        b.add(second, cue=True)
    answer, foil = ("positive", "negative") if positive else ("negative", "positive")
    flipped = rng.choice(vocab.NEGATIVE if positive else vocab.POSITIVE)
    start, end = b.spans[0]
    corrupted = b.text[:start] + flipped + b.text[end:]
    if second is not None:
        # keep the corrupted text one-sided: flip the second cue as well
        s2, e2 = b.spans[1]
        delta = len(flipped) - (end - start)
        corrupted = corrupted[: s2 + delta] + flipped + corrupted[e2 + delta:]
    key = f"sentiment|{b.text}"
    return _record(key, b, answer, foil, corrupted, foil, label=int(positive))


def bigram_text(rng: random.Random, chain: dict[str, list[tuple[str, float]]], length: int = 16) -> dict:
    """A sentence sampled from a peaked word-level Markov chain (strong bigram statistics)."""
    words = [rng.choice(sorted(chain))]
    for _ in range(length - 1):
        successors, weights = zip(*chain[words[-1]])
        words.append(rng.choices(successors, weights=weights)[0])
    b = _PromptBuilder().add(" ".join(words[:-1]))
    return _record(f"bigram|{' '.join(words)}", b, words[-1], words[0], b.text, words[-1])


def make_bigram_chain(seed: int, n_successors: int = 3) -> dict[str, list[tuple[str, float]]]:
    """A deterministic Markov chain over the task vocabulary: each word has a few successors
    with peaked probabilities (0.6 / 0.25 / 0.15)."""
    rng = random.Random(seed)
    words = sorted(set(vocab.OBJECTS + vocab.COLORS + vocab.ADJECTIVES + vocab.PLACES + vocab.THINGS
                       + [w for pair in vocab.NOUN_PAIRS for w in pair] + vocab.TOPICS + vocab.ASPECTS))
    weights = [0.6, 0.25, 0.15][:n_successors]
    return {w: list(zip(rng.sample(words, n_successors), weights)) for w in words}


GENERATORS: dict[str, Callable[..., dict]] = {
    "ioi": ioi,
    "sva": sva,
    "colored_objects": colored_objects,
    "laundry_list": laundry_list,
    "induction": induction,
    "sentiment": sentiment,
    "bigram_text": bigram_text,
}
