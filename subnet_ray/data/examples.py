"""Loading and deterministic sampling of labelled examples, per language and split.

What each task is (languages, hub id, text columns, label mapping, parallelism) lives in the
task registry (sweep/tasks.py); this module reads rows, applies the record's label mapping, samples.
babel is generated (babel.py).

Where the rows come from (`TaskSpec.source`):
- a hub dataset id, loaded with `datasets.load_dataset`: the language is the config name,
  or fills `{lang}` in the id (the default for marc). Hub split names: train, validation, test.
- a local folder `<source>/<lang>/<split>.<ext>`, ext in jsonl / csv / tsv / parquet, dev may
  also be named validation. TSV files are read unquoted, like the XNLI and PAWS-X releases.
- local task only, also: `<source>/<split>.<ext>` holding all languages, or a single file
  holding all languages and splits, from which train, dev and test are carved as disjoint
  consecutive pieces of one seeded permutation per language.

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
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import babel as babel_mod
from ..sweep.config import TaskSpec
from .seeding import rng
from ..sweep.tasks import TASKS, task_record


class DataError(ValueError):
    """Data that cannot be used; the message names the task, language, split, file and column."""


@dataclass(frozen=True)
class Example:
    """One labelled example of one language."""

    id: str  # f"{task_id}/{language}/{split}/{source_row}", stable and unique within a task
    language: str
    text: str
    text_pair: str | None
    label: int


SPLITS = ("train", "dev", "test")
FORMATS = ("jsonl", "csv", "tsv", "parquet")
HUB_SPLIT = {"train": "train", "dev": "validation", "test": "test"}


def num_labels(task: TaskSpec) -> int:
    """Returns the number of classes of `task`: its record's, or `task.num_labels` where the sweep sets it (local)."""
    return task_record(task.id).num_labels or task.num_labels


# ---------------------------------------------------------------------------------------------
# Reading rows


@dataclass
class Rows:
    """Rows of one language and split after the task's label mapping, before sampling."""

    where: str  # file or hub dataset, for error messages
    table: pa.Table
    text_column: str
    pair_column: str | None
    label: np.ndarray  # int64 per row of `table`; -1 = dropped (MARC 3 stars)
    row: np.ndarray  # index of each row of `table` in its source file / split


def string_columns(task: TaskSpec) -> tuple[str, ...]:
    """Returns the columns of the task's files that hold text (read as strings, whatever they look like)."""
    if task.id == "local":
        return tuple(c for c in (task.text_column, task.text_pair_column, task.language_column, task.group_column) if c)
    return task_record(task.id).text_columns


def read_file(path: Path, strings: tuple[str, ...] = ()) -> pa.Table:
    """Returns the table in a jsonl / csv / tsv / parquet file (no columns if the file is blank).

    csv / tsv columns named in `strings` are read as text as written (no "true" -> True, "12" -> 12).
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    ext = path.name.rsplit(".", 1)[-1]
    try:
        if ext == "jsonl":
            if not path.read_bytes().strip():
                return pa.table({})
            return pjson.read_json(path)
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in strings})
        if ext == "csv":
            return pcsv.read_csv(path, convert_options=convert)
        if ext == "tsv":
            parse = pcsv.ParseOptions(delimiter="\t", quote_char=False)
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
        if ext == "parquet":
            return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read {ext} file: {e}") from None
    raise DataError(f"{path}: unknown file format {ext!r}; expected one of {', '.join(FORMATS)}")


def find_split_file(folder: Path, split: str) -> Path | None:
    """Returns `<folder>/<split>.<ext>` (dev also as validation), or None if there is none."""
    names = [split, "validation"] if split == "dev" else [split]
    found = [folder / f"{n}.{ext}" for n in names for ext in FORMATS if (folder / f"{n}.{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: several files for split {split!r}: {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def _missing_file(task: TaskSpec, lang: str, split: str, folder: Path) -> DataError:
    alts = " or validation" if split == "dev" else ""
    return DataError(
        f"task {task.id!r}, language {lang!r}, split {split!r}: no file {folder}/{split}{alts}.<{'|'.join(FORMATS)}>"
    )


def _where(task: TaskSpec, lang: str, split: str, where: str) -> str:
    return f"task {task.id!r}, language {lang!r}, split {split!r}: {where}"


def _require(table: pa.Table, names: list[str], task: TaskSpec, lang: str, split: str, where: str) -> None:
    for name in names:
        if name not in table.column_names:
            raise DataError(f"{_where(task, lang, split, where)} has no column {name!r} (columns: {', '.join(table.column_names) or 'none'})")


def checked_labels(table: pa.Table, name: str, allowed: range, task: TaskSpec, lang: str, split: str, where: str, rows: np.ndarray) -> np.ndarray:
    """Returns the label column as int64; a DataError naming the file, row and value for a label outside `allowed`."""
    values = table.column(name).to_pylist()
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
            raise DataError(
                f"{_where(task, lang, split, where)} column {name!r} has label {v!r} at row {rows[i]}; "
                f"expected an integer in [{allowed.start}, {allowed.stop - 1}]"
            )
    return np.asarray(values, dtype=np.int64)


@dataclass
class _SourceView:
    """The rows of one language and split as a task's converter sees them (tasks.Source)."""

    task: TaskSpec
    table: pa.Table
    lang: str
    split: str
    where: str
    rows: np.ndarray

    @property
    def columns(self) -> set[str]:
        return set(self.table.column_names)

    def require(self, *names: str) -> None:
        _require(self.table, list(names), self.task, self.lang, self.split, self.where)

    def labels(self, name: str, allowed: range) -> np.ndarray:
        return checked_labels(self.table, name, allowed, self.task, self.lang, self.split, self.where, self.rows)

    def error(self, message: str) -> DataError:
        return DataError(f"{_where(self.task, self.lang, self.split, self.where)} {message}")


def _convert(task: TaskSpec, table: pa.Table, lang: str, split: str, where: str, rows: np.ndarray) -> Rows:
    """Returns the rows of `table` with labels mapped to the task's classes; checks columns and labels."""
    if table.num_rows == 0:
        raise DataError(f"{_where(task, lang, split, where)} has no rows (empty language)")
    text, pair, labels = task_record(task.id).convert(_SourceView(task, table, lang, split, where, rows), task)
    return Rows(where, table, text, pair, labels, rows)


def _texts(rows: Rows, column: str, take: np.ndarray, task: TaskSpec, lang: str, split: str) -> list[str]:
    """Returns the strings of `column` at positions `take` of `rows`; a missing value is an error."""
    values = rows.table.column(column).take(pa.array(take, type=pa.int64())).to_pylist()
    for i, v in zip(take, values):
        if v is None:
            raise DataError(f"{_where(task, lang, split, rows.where)} column {column!r} is empty at row {rows.row[i]}")
    # jsonl / parquet may hold numbers in a text column.
    return [v if isinstance(v, str) else str(v) for v in values]


def _hub_rows(task: TaskSpec, lang: str, split: str, source: str) -> Rows:
    """Returns the rows of one language and split of a hub dataset."""
    import datasets

    if "{lang}" in source:
        path, name = source.format(lang=lang), None
    else:
        path, name = source, lang
    where = f"hub dataset {path!r}" + (f" config {name!r}" if name else "") + f" split {HUB_SPLIT[split]!r}"
    try:
        ds = datasets.load_dataset(path, name, split=HUB_SPLIT[split])
    except Exception as e:  # network, missing config or split: all mean this source is unusable
        raise DataError(f"task {task.id!r}, language {lang!r}, split {split!r}: cannot load {where}: {type(e).__name__}: {e}") from None
    table = ds.with_format("arrow")[:]
    return _convert(task, table, lang, split, where, np.arange(table.num_rows))


def _local_rows(task: TaskSpec, lang: str, split: str, source: Path) -> tuple[Rows, bool]:
    """Returns (rows of one language and split from local files, whether the file holds all splits)."""
    if source.is_file():
        if task.id != "local":
            raise DataError(f"task {task.id!r}: source {source} is a file; expected a folder <source>/<lang>/<split>.<ext>")
        return _filter_language(task, lang, split, source), True
    if (source / lang).is_dir():
        path = find_split_file(source / lang, split)
        if path is None:
            raise _missing_file(task, lang, split, source / lang)
        table = read_file(path, string_columns(task))
        return _convert(task, table, lang, split, str(path), np.arange(table.num_rows)), False
    if task.id == "local":
        path = find_split_file(source, split)
        if path is not None:
            return _filter_language(task, lang, split, path), False
        raise DataError(
            f"task 'local', language {lang!r}, split {split!r}: no folder {source / lang} and no file "
            f"{source}/{split}.<{'|'.join(FORMATS)}> holding all languages"
        )
    raise DataError(f"task {task.id!r}, language {lang!r}, split {split!r}: no folder {source / lang}")


def _filter_language(task: TaskSpec, lang: str, split: str, path: Path) -> Rows:
    """Returns the rows of `path` whose language column is `lang`."""
    table = read_file(path, string_columns(task))
    _require(table, [task.language_column], task, lang, split, str(path))
    langs = np.asarray([str(v) for v in table.column(task.language_column).to_pylist()], dtype=object)
    rows = np.flatnonzero(langs == lang)
    if len(rows) == 0:
        present = sorted(set(langs.tolist()))
        raise DataError(
            f"task {task.id!r}, language {lang!r}, split {split!r}: {path} column {task.language_column!r} has no rows "
            f"of language {lang!r} (languages present: {', '.join(present) or 'none'})"
        )
    return _convert(task, table.take(pa.array(rows)), lang, split, str(path), rows)


def _source_rows(task: TaskSpec, lang: str, split: str) -> tuple[Rows, bool]:
    source = task.source or task_record(task.id).hub
    if source is None:
        raise DataError(f"task {task.id!r}: no source given; the local task needs `source`, a file or folder")
    if Path(source).expanduser().exists():
        return _local_rows(task, lang, split, Path(source).expanduser())
    if task.id == "local" or source.startswith((".", "/", "~")) or "\\" in source:
        raise DataError(f"task {task.id!r}, language {lang!r}, split {split!r}: source {source} does not exist")
    return _hub_rows(task, lang, split, source), False


# ---------------------------------------------------------------------------------------------
# Sampling


def _check_language(task: TaskSpec, lang: str) -> None:
    known = task_record(task.id).languages
    if known is not None and lang not in known:
        raise DataError(f"task {task.id!r}: unknown language {lang!r}; {task.id} offers {', '.join(known)}")


def split_sizes(task: TaskSpec) -> dict[str, int]:
    """Returns the number of examples per language the task asks for in each split."""
    return {"train": task.train_size, "dev": task.dev_size, "test": task.test_size}


def _sample_language(task: TaskSpec, lang: str, split: str) -> list[Example]:
    n = split_sizes(task)[split]
    rows, all_splits = _source_rows(task, lang, split)
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
            raise DataError(f"{_where(task, lang, split, r.where)} column {by!r} is empty at row {r.row[col.index(None)]}")
        k = np.asarray([str(v) for v in col], dtype=object)
        uniq, counts = np.unique(k, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{_where(task, lang, split, r.where)} column {by!r} repeats item {uniq[counts > 1][0]!r}; items must be unique")
        keys[lang] = k
    return keys


def _sample_parallel(task: TaskSpec, split: str, by: str) -> list[Example]:
    """Returns the sampled examples of `split`: the same source items in every language."""
    found = {lang: _source_rows(task, lang, split) for lang in task.languages}
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
