"""Reading the rows of one language and split from a task's source, with the task's label mapping applied.

What each task is (languages, hub id, text columns, label mapping, parallelism) lives in the
task registry (sweep/tasks.py); this module finds and reads a language's file or hub split,
checks its columns and labels and maps the labels to the task's classes (`Rows`). Which rows
become examples (sampling) is examples.py's.

Where the rows come from (`TaskSpec.source`):
- a hub dataset id, loaded with `datasets.load_dataset`: the language is the config name,
  or fills `{lang}` in the id (the default for marc). Hub split names: train, validation, test.
- a local folder `<source>/<lang>/<split>.<ext>`, ext in jsonl / csv / tsv / parquet, dev may
  also be named validation. TSV files are read unquoted, like the XNLI and PAWS-X releases.
- local task only, also: `<source>/<split>.<ext>` holding all languages, or a single file
  holding all languages and splits, from which train, dev and test are carved as disjoint
  consecutive pieces of one seeded permutation per language (the carving is examples.py's).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..sweep.config import TaskSpec
from ..sweep.tasks import task_record


class DataError(ValueError):
    """Data that cannot be used; the message names the task, language, split, file and column."""


FORMATS = ("jsonl", "csv", "tsv", "parquet")
HUB_SPLIT = {"train": "train", "dev": "validation", "test": "test"}


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


def error_prefix(task: TaskSpec, lang: str, split: str, where: str) -> str:
    """Returns the start of a DataError message: the task, language, split and where (file or hub dataset)."""
    return f"task {task.id!r}, language {lang!r}, split {split!r}: {where}"


def _require(table: pa.Table, names: list[str], task: TaskSpec, lang: str, split: str, where: str) -> None:
    for name in names:
        if name not in table.column_names:
            raise DataError(f"{error_prefix(task, lang, split, where)} has no column {name!r} (columns: {', '.join(table.column_names) or 'none'})")


def checked_labels(table: pa.Table, name: str, allowed: range, task: TaskSpec, lang: str, split: str, where: str, rows: np.ndarray) -> np.ndarray:
    """Returns the label column as int64; a DataError naming the file, row and value for a label outside `allowed`."""
    values = table.column(name).to_pylist()
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
            raise DataError(
                f"{error_prefix(task, lang, split, where)} column {name!r} has label {v!r} at row {rows[i]}; "
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
        return DataError(f"{error_prefix(self.task, self.lang, self.split, self.where)} {message}")


def _convert(task: TaskSpec, table: pa.Table, lang: str, split: str, where: str, rows: np.ndarray) -> Rows:
    """Returns the rows of `table` with labels mapped to the task's classes; checks columns and labels."""
    if table.num_rows == 0:
        raise DataError(f"{error_prefix(task, lang, split, where)} has no rows (empty language)")
    text, pair, labels = task_record(task.id).convert(_SourceView(task, table, lang, split, where, rows), task)
    return Rows(where, table, text, pair, labels, rows)


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


def source_rows(task: TaskSpec, lang: str, split: str) -> tuple[Rows, bool]:
    """Returns (the rows of one language and split from the task's local source or hub dataset, whether the file holds all splits)."""
    source = task.source or task_record(task.id).hub
    if source is None:
        raise DataError(f"task {task.id!r}: no source given; the local task needs `source`, a file or folder")
    if Path(source).expanduser().exists():
        return _local_rows(task, lang, split, Path(source).expanduser())
    if task.id == "local" or source.startswith((".", "/", "~")) or "\\" in source:
        raise DataError(f"task {task.id!r}, language {lang!r}, split {split!r}: source {source} does not exist")
    return _hub_rows(task, lang, split, source), False
