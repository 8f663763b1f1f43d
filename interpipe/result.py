"""The one shape of a study's result: ``info``, ``save``, ``load``, ``to_frame`` and ``plot``.

Every study hands back a :class:`Result`: token attribution's
:class:`~interpipe.attribution.result.Attribution`, the circuits study's
:class:`~interpipe.circuits.results.CircuitResult`, the weight-level studies'
:class:`~interpipe.weights.result.StudyResult` (and its three subclasses), quantization's
:class:`~interpipe.quant.results.SettingResult` and :class:`~interpipe.quant.results.QuantStudyResult`,
and one (FP, quantized) pair of the interpretability-under-quantization study,
:class:`~interpipe.quant_interp.study.PairResult`. The shape (after inseq's
``FeatureAttributionOutput``, whose ``info`` says what produced it):

- ``info`` — what ran: the run record's identity that the stage hands in
  (:func:`interpipe.run_record.run_identity`: stage, study, model, seed, config hash, revision) plus what
  the study adds (its settings and their hash); saved with the result and read back by ``load``.
- ``save(folder, overwrite=False) -> folder`` — writes the result's files (each class keeps its own
  file names: the pipeline, the report and the tests read them) and refuses to replace an earlier
  result unless ``overwrite=True``, always through :func:`writing`.
- ``load(folder)`` — a classmethod that reads a folder written by ``save`` back into the class.
- ``to_frame()`` — the result as one pandas ``DataFrame``.
- ``plot()`` — a matplotlib figure, or a dict of figures by file stem where a result has several.

The overwrite rule (:func:`writing`) has two forms. A result that owns its whole folder (a circuits
analysis) is written into a temporary sibling folder that replaces ``folder`` only once every file is
written, so an interrupted save leaves the previous result (or nothing). A result that shares its
folder with other outputs of its stage (an attribution method's folder also gets the evaluation
tables; a study's folder also gets ``metrics.json`` and exported models) names one *marker* file: the
folder holds a result when the marker exists, each file is written atomically in place, and ``save``
writes the marker last so a half-finished save is never taken for a result.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with writing(root / "r") as tmp:
...     _ = (tmp / "a.txt").write_text("first")
>>> with writing(root / "r") as tmp:  # doctest: +ELLIPSIS
...     pass
Traceback (most recent call last):
...
interpipe.io.OutputExistsError: ... already holds a result; pass overwrite=True to replace it, or save into another folder
>>> (root / "r" / "a.txt").read_text()
'first'
"""

from __future__ import annotations

import abc
import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from interpipe.io import OutputExistsError, atomic_dir


class Result(abc.ABC):
    """The contract every study's result class keeps (see the module docstring).

    Subclasses are dataclasses or plain classes that set ``info`` in ``__init__``; leaving out one
    of the four verbs makes the class abstract (it cannot be instantiated).
    """

    info: dict  # the run record identity the stage hands in, plus the study's own settings

    @abc.abstractmethod
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the result into ``folder`` (through :func:`writing`) and return ``folder``."""

    @classmethod
    @abc.abstractmethod
    def load(cls, folder: str | os.PathLike) -> "Result":
        """Read a folder written by :meth:`save`."""

    @abc.abstractmethod
    def to_frame(self) -> Any:
        """The result as one pandas ``DataFrame``."""

    @abc.abstractmethod
    def plot(self) -> Any:
        """A matplotlib figure, or a dict of figures by file stem."""


def refuse_overwrite(folder: Path, held: Path, overwrite: bool) -> None:
    """Raise :class:`~interpipe.io.OutputExistsError` when ``held`` (the folder or its marker) exists."""
    if held.exists() and not overwrite:
        what = "" if held == folder else f" ({held.name} exists)"
        raise OutputExistsError(f"{folder} already holds a result{what}; pass overwrite=True to replace it, "
                                "or save into another folder")


@contextlib.contextmanager
def writing(folder: str | os.PathLike, overwrite: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Yield the folder a result's ``save`` writes its files into, refusing to replace an earlier result.

    ``marker=None``: the result owns ``folder``; the yielded folder is a temporary sibling that
    replaces ``folder`` once the block succeeds (:func:`interpipe.io.atomic_dir`), and ``folder``
    counts as holding a result whenever it exists. ``marker="<file>"``: the result shares
    ``folder`` with other outputs; ``folder`` itself is yielded (created if missing), and it holds a
    result when ``folder / marker`` exists, which ``save`` writes last.

    Raises:
        OutputExistsError: ``folder`` holds a result and ``overwrite`` is False (nothing is written).
    """
    folder = Path(folder)
    refuse_overwrite(folder, folder if marker is None else folder / marker, overwrite)
    if marker is None:
        with atomic_dir(folder, overwrite=True) as tmp:
            yield tmp
    else:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
