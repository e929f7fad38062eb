"""Loading and deterministic sampling of labelled examples, per language and split.

What each task is (languages, hub id, text columns, label mapping, parallelism) lives in the
task registry (sweep/tasks.py); sources.py reads a language's rows (hub dataset or local files)
and applies the record's label mapping; this module samples them into `Example`s.
babel is generated (babel.py).

Sampling. Parallel tasks (XNLI, PAWS-X, and `local` with a `group_column`; babel is generated
parallel) draw the same source items for every language, as the paper needs ("giving each
language an equal opportunity to be retrieved amongst the most influential samples", 4.3):
items are aligned by the dataset's own id where every language has one (PAWS-X `id`), by the
group column (`local`), else by row position (the XNLI releases are row-aligned), and the first
`<split>_size` items of one permutation seeded by (data_seed, split) are taken in every
language; sources that do not align (other ids, other row counts) are refused, naming the
languages. MARC is not parallel: per language, the first `<split>_size` usable rows of a
permutation seeded by (data_seed, language, split). An example's id is
`<task>/<language>/<split>/<source_row>`.

`tokenizer_for(task)` builds the tiny model's tokenizer from the task's words or training texts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import babel as babel_mod
from ..sweep.config import TaskSpec
from .seeding import rng
from .sources import DataError, Rows, error_prefix, source_rows
from ..sweep.tasks import TASKS, task_record


@dataclass(frozen=True)
class Example:
    """One labelled example of one language."""

    id: str  # f"{task_id}/{language}/{split}/{source_row}", stable and unique within a task
    language: str
    text: str
    text_pair: str | None
    label: int


SPLITS = ("train", "dev", "test")


def num_labels(task: TaskSpec) -> int:
    """Returns the number of classes of `task`: its record's, or `task.num_labels` where the sweep sets it (local)."""
    return task_record(task.id).num_labels or task.num_labels


# ---------------------------------------------------------------------------------------------
# Sampling


def _texts(rows: Rows, column: str, take: np.ndarray, task: TaskSpec, lang: str, split: str) -> list[str]:
    """Returns the strings of `column` at positions `take` of `rows`; a missing value is an error."""
    values = rows.table.column(column).take(pa.array(take, type=pa.int64())).to_pylist()
    for i, v in zip(take, values):
        if v is None:
            raise DataError(f"{error_prefix(task, lang, split, rows.where)} column {column!r} is empty at row {rows.row[i]}")
    # jsonl / parquet may hold numbers in a text column.
    return [v if isinstance(v, str) else str(v) for v in values]


def _check_language(task: TaskSpec, lang: str) -> None:
    known = task_record(task.id).languages
    if known is not None and lang not in known:
        raise DataError(f"task {task.id!r}: unknown language {lang!r}; {task.id} offers {', '.join(known)}")


def split_sizes(task: TaskSpec) -> dict[str, int]:
    """Returns the number of examples per language the task asks for in each split."""
    return {"train": task.train_size, "dev": task.dev_size, "test": task.test_size}


def _sample_language(task: TaskSpec, lang: str, split: str) -> list[Example]:
    n = split_sizes(task)[split]
    rows, all_splits = source_rows(task, lang, split)
    where = rows.where
    usable = np.flatnonzero(rows.label >= 0)
    if all_splits:
        # One file for every split: carve disjoint pieces of one permutation, train then dev then test.
        order = rng(task.data_seed, lang, "all-splits").permutation(usable)
        sizes = split_sizes(task)
        start = sum(sizes[s] for s in SPLITS[: SPLITS.index(split)])
        need, have = start + n, len(usable)
        take = order[start : start + n]
    else:
        order = rng(task.data_seed, lang, split).permutation(usable)
        need, have = n, len(usable)
        take = order[:n]
    if have < need:
        what = "usable rows (3-star reviews are dropped)" if task.id == "marc" else "rows"
        carve = f" (train + dev + test up to {split} = {need}, carved from one file)" if all_splits else ""
        raise DataError(
            f"task {task.id!r}, language {lang!r}, split {split!r}: {where} has only {have} {what}, "
            f"fewer than the {need} asked{carve}"
        )
    texts = _texts(rows, rows.text_column, take, task, lang, split)
    pairs = _texts(rows, rows.pair_column, take, task, lang, split) if rows.pair_column else [None] * len(take)
    return [
        Example(f"{task.id}/{lang}/{split}/{rows.row[i]}", lang, t, p, int(rows.label[i]))
        for i, t, p in zip(take, texts, pairs)
    ]


def parallel_by(task: TaskSpec) -> str | None:
    """Returns how `task`'s languages align: a column naming the item, "" for row position, None if not parallel."""
    if task.id == "local":
        return task.group_column
    return task_record(task.id).parallel_by


def item_keys(task: TaskSpec, split: str, by: str, rows: dict[str, Rows]) -> dict[str, np.ndarray]:
    """Returns, per language, the item key of each row: the `by` column's values, else the row position."""
    have = {lang: by in r.table.column_names for lang, r in rows.items()} if by else {}
    if by and not all(have.values()):
        missing = [lang for lang, h in have.items() if not h]
        if task.id == "local" or any(have.values()):
            raise DataError(
                f"task {task.id!r}, split {split!r}: language(s) {', '.join(missing)} have no column {by!r} "
                f"({rows[missing[0]].where}); parallel items are aligned by it"
            )
        by = ""  # no language has the dataset's id column: its files are aligned by position
    if not by:
        counts = {lang: r.table.num_rows for lang, r in rows.items()}
        if len(set(counts.values())) > 1:
            (a, na), (b, nb) = sorted(counts.items(), key=lambda kv: kv[1])[0], sorted(counts.items(), key=lambda kv: kv[1])[-1]
            raise DataError(
                f"task {task.id!r}, split {split!r}: languages {a!r} ({na} rows, {rows[a].where}) and {b!r} ({nb} rows, "
                f"{rows[b].where}) are not row-aligned; a parallel task needs the same items in every language"
            )
        return {lang: r.row.astype(str) for lang, r in rows.items()}
    keys = {}
    for lang, r in rows.items():
        col = r.table.column(by).to_pylist()
        if any(v is None for v in col):
            raise DataError(f"{error_prefix(task, lang, split, r.where)} column {by!r} is empty at row {r.row[col.index(None)]}")
        k = np.asarray([str(v) for v in col], dtype=object)
        uniq, counts = np.unique(k, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{error_prefix(task, lang, split, r.where)} column {by!r} repeats item {uniq[counts > 1][0]!r}; items must be unique")
        keys[lang] = k
    return keys


def _sample_parallel(task: TaskSpec, split: str, by: str) -> list[Example]:
    """Returns the sampled examples of `split`: the same source items in every language."""
    found = {lang: source_rows(task, lang, split) for lang in task.languages}
    rows = {lang: r for lang, (r, _) in found.items()}
    all_splits = any(a for _, a in found.values())
    keys = item_keys(task, split, by, rows)
    first = task.languages[0]
    # items usable in every language, in the first language's source order
    usable = {lang: set(k[r.label >= 0].tolist()) for (lang, k), r in zip(keys.items(), rows.values())}
    for lang in task.languages[1:]:
        if set(keys[lang].tolist()) != set(keys[first].tolist()):
            only = sorted(set(keys[first].tolist()) ^ set(keys[lang].tolist()))
            raise DataError(
                f"task {task.id!r}, split {split!r}: languages {first!r} and {lang!r} do not hold the same items "
                f"({len(only)} differ, e.g. {only[0]!r}; aligned by {('column ' + repr(by)) if by else 'row position'}); "
                "a parallel task needs the same items in every language"
            )
    common = [k for k in keys[first].tolist() if all(k in u for u in usable.values())]
    sizes = split_sizes(task)
    n = sizes[split]
    if all_splits:  # one file for every split: disjoint pieces of one permutation, train then dev then test
        order = rng(task.data_seed, "parallel", "all-splits").permutation(len(common))
        start = sum(sizes[s] for s in SPLITS[: SPLITS.index(split)])
    else:
        order = rng(task.data_seed, "parallel", split).permutation(len(common))
        start = 0
    if len(common) < start + n:
        carve = f" (train + dev + test up to {split} = {start + n}, carved from one file)" if all_splits else ""
        raise DataError(
            f"task {task.id!r}, split {split!r}: {rows[first].where} has only {len(common)} rows usable in every language "
            f"({', '.join(task.languages)}), fewer than the {start + n} asked{carve}"
        )
    chosen = [common[i] for i in order[start : start + n]]
    out = []
    for lang in task.languages:
        r = rows[lang]
        where = {k: i for i, k in enumerate(keys[lang].tolist())}
        take = np.asarray([where[k] for k in chosen], dtype=np.int64)
        texts = _texts(r, r.text_column, take, task, lang, split)
        pairs = _texts(r, r.pair_column, take, task, lang, split) if r.pair_column else [None] * len(take)
        out += [Example(f"{task.id}/{lang}/{split}/{r.row[i]}", lang, t, p, int(r.label[i])) for i, t, p in zip(take, texts, pairs)]
    return out


def babel_languages(task: TaskSpec) -> babel_mod.Babel:
    """Returns the generated languages of a babel task (lexicons, word orders, concept roles)."""
    try:
        return babel_mod.make_babel(task.babel, list(task.languages), task.data_seed)
    except ValueError as e:
        raise DataError(f"task 'babel': {e}") from None


def _babel_language(task: TaskSpec, world: babel_mod.Babel, lang: str, split: str) -> list[Example]:
    # Babel is parallel: row i is latent item i of the split in every language, so ids align
    # across languages (babel/<lang>/<split>/<i>) and do not depend on the task's other languages.
    texts, labels = babel_mod.generate(world, lang, split, split_sizes(task)[split])
    return [Example(f"babel/{lang}/{split}/{i}", lang, t, None, int(y)) for i, (t, y) in enumerate(zip(texts, labels))]


def load_examples(task: TaskSpec, split: str) -> list[Example]:
    """Returns the sampled examples of `split`, grouped by language in `task.languages` order.

    Raises DataError naming the task, language, split, file and column for an unknown task,
    split or language, a missing file or column, a label out of range, an empty language or
    fewer examples than asked.
    """
    if task.id not in TASKS:
        raise DataError(f"unknown task {task.id!r}; expected one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise DataError(f"task {task.id!r}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    for lang in task.languages:  # before any loading, so a typo fails fast
        _check_language(task, lang)
    if task_record(task.id).convert is None:  # generated: babel
        world = babel_languages(task)
        return [ex for lang in task.languages for ex in _babel_language(task, world, lang, split)]
    by = parallel_by(task)
    if by is not None:
        return _sample_parallel(task, split, by)
    return [ex for lang in task.languages for ex in _sample_language(task, lang, split)]


def tokenizer_for(task: TaskSpec, vocab_size: int = 8000):
    """Returns the tiny model's tokenizer for `task`: WordLevel over babel's words, else WordPiece over its training texts."""
    from .tokenization import wordlevel_tokenizer, wordpiece_tokenizer

    if task_record(task.id).convert is None:
        return wordlevel_tokenizer(babel_languages(task).vocabulary())
    texts = (t for ex in load_examples(task, "train") for t in (ex.text, ex.text_pair) if t is not None)
    return wordpiece_tokenizer(texts, vocab_size)
