"""The task registry: one record per data set, read by sweep validation and by loading.

A record says which languages a task offers, where its rows come from by default (a hub id),
which columns are text, whether its languages are parallel (and what names an item), and how
a row's label becomes the task's class. Adding a data set is one `register(TaskRecord(...))`
and its fixture test; nothing else in the package names tasks.

Converters get a `Source` (the rows of one language and split, as data/sources.py reads them) and
return (text column, text-pair column or None, labels); a label of -1 drops the row.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Source(Protocol):
    """The rows of one language and split, as a converter sees them (implemented in data/sources.py)."""

    columns: set[str]

    def require(self, *names: str) -> None:
        """Raises DataError naming the file unless every column in `names` is present."""

    def labels(self, name: str, allowed: range) -> np.ndarray:
        """Returns column `name` as int64 labels; raises DataError at the first value outside `allowed`."""

    def error(self, message: str) -> Exception:
        """Returns a DataError that names the task, language, split and file before `message`."""


Converter = Callable[[Source, Any], tuple[str, str | None, np.ndarray]]


@dataclass(frozen=True)
class TaskRecord:
    """One data set: languages, default source, text columns, parallel alignment, label mapping."""

    id: str
    convert: Converter | None  # (rows, TaskSpec) -> (text column, pair column, labels); None: generated
    languages: tuple[str, ...] | None = None  # offered language codes; None: any code the sweep names
    hub: str | None = None  # default source: hub id ("{lang}" filled per language, else the language is the config)
    text_columns: tuple[str, ...] = ()  # columns read as text, as written (csv / tsv)
    parallel_by: str | None = None  # column naming an item in every language; "" = row position; None = not parallel
    num_labels: int | None = 2  # None: the sweep's task.num_labels


TASKS: dict[str, TaskRecord] = {}


def register(record: TaskRecord) -> TaskRecord:
    """Returns `record` after adding it to the registry (a record of the same id is replaced)."""
    TASKS[record.id] = record
    return record


def task_record(task_id: str) -> TaskRecord:
    """Returns the record of `task_id`; raises KeyError listing the known tasks."""
    if task_id not in TASKS:
        raise KeyError(f"unknown task {task_id!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task_id]


# ---- the paper's tasks ------------------------------------------------------------------------


def _xnli(rows: Source, task) -> tuple[str, str | None, np.ndarray]:
    # Binary as in the paper: 1 = entailment (0 in the release), 0 = neutral or contradiction.
    rows.require("premise", "hypothesis", "label")
    return "premise", "hypothesis", (rows.labels("label", range(3)) == 0).astype(np.int64)


def _pawsx(rows: Source, task) -> tuple[str, str | None, np.ndarray]:
    rows.require("sentence1", "sentence2", "label")
    return "sentence1", "sentence2", rows.labels("label", range(2))


def _marc(rows: Source, task) -> tuple[str, str | None, np.ndarray]:
    # Original columns: stars 1-2 -> 0, 4-5 -> 1, 3 dropped; text = title, pair = body. SetFit's
    # port keeps text (= body) and label (= stars - 1; = stars in early revisions, with 5s).
    if "stars" in rows.columns or not {"text", "label"} <= rows.columns:
        rows.require("stars", "review_title", "review_body")
        stars, text, pair = rows.labels("stars", range(1, 6)), "review_title", "review_body"
    else:
        stars, text, pair = rows.labels("label", range(0, 6)), "text", None
        if (stars == 5).any() and (stars == 0).any():
            raise rows.error("column 'label' holds both 0 and 5; cannot tell stars - 1 from stars")
        if not (stars == 5).any():
            stars = stars + 1
    return text, pair, np.where(stars <= 2, 0, np.where(stars >= 4, 1, -1))


def _local(rows: Source, task) -> tuple[str, str | None, np.ndarray]:
    rows.require(task.text_column, task.label_column, *([task.text_pair_column] if task.text_pair_column else []))
    return task.text_column, task.text_pair_column, rows.labels(task.label_column, range(task.num_labels))


XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")

register(TaskRecord("xnli", _xnli, XNLI_LANGUAGES, "facebook/xnli", ("premise", "hypothesis"), parallel_by=""))
register(TaskRecord("pawsx", _pawsx, ("de", "en", "es", "fr", "ja", "ko", "zh"), "google-research-datasets/paws-x",
                    ("sentence1", "sentence2"), parallel_by="id"))
register(TaskRecord("marc", _marc, ("de", "en", "es", "fr", "ja", "zh"), "SetFit/amazon_reviews_multi_{lang}",
                    ("review_title", "review_body", "text")))
# local: columns, classes and parallelism come from the sweep's TaskSpec (see data.parallel_by)
register(TaskRecord("local", _local, num_labels=None))
register(TaskRecord("babel", None))  # generated (data/babel.py): parallel by construction
