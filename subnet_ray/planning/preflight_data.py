"""Preflight of a task's data: files exist, hold the named columns, labels in range, enough rows, parallel items align.

Reads headers and only the columns that decide those (labels, language, the parallel item id),
never the text. The task's own converter from the registry (tasks.py) maps the labels, given a
`_Probe` that reads a column on demand, so a newly registered data set is checked as it will be
loaded. File layout, sampling rules and messages mirror data/sources.py and data/examples.py; each problem
is one line naming the task, language, split, file and column, and what was expected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..data import examples as data
from ..data import sources
from ..sweep.config import TaskSpec
from ..data.examples import SPLITS
from ..data.sources import FORMATS, DataError
from ..sweep.tasks import task_record


@dataclass
class DataReport:
    """What the data preflight found and how much it read."""

    errors: list[str] = field(default_factory=list)
    hub_sources: list[tuple[str, str]] = field(default_factory=list)  # (where in the sweep, hub dataset id)
    values_read: int = 0  # values read from data files (labels, languages, item ids; never text)
    files: int = 0


def _parse_csv(path: Path):
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(delimiter="\t", quote_char=False) if path.suffix == ".tsv" else pcsv.ParseOptions()


def header(path: Path) -> list[str]:
    """Returns the column names of a data file, from its first block / metadata only."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DataError(f"{path}: first row is {type(row).__name__}; expected a JSON object per line")
                        return list(row)
            return []
        import pyarrow.csv as pcsv

        if path.stat().st_size == 0:
            return []
        read = pcsv.ReadOptions(block_size=1 << 16)
        return pcsv.open_csv(path, read_options=read, parse_options=_parse_csv(path)).schema.names
    except DataError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read {path.suffix[1:]} file header: {e}") from None


def _json_type(path: Path, name: str) -> pa.DataType:
    """Returns the arrow type of `name` in the first row of a jsonl file (arrow needs it to skip the other columns)."""
    with path.open("rb") as f:
        first = next((json.loads(line) for line in f if line.strip()), {})
    v = first.get(name)
    return pa.string() if isinstance(v, str) else pa.bool_() if isinstance(v, bool) else pa.float64() if isinstance(v, float) else pa.int64()


def read_column(path: Path, name: str, strings: tuple[str, ...]) -> pa.ChunkedArray:
    """Returns one column of a data file (the others, text included, are never converted)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.ParquetFile(path).read(columns=[name]).column(name)
        if path.suffix == ".jsonl":
            typ = pa.string() if name in strings else _json_type(path, name)
            parse = pjson.ParseOptions(explicit_schema=pa.schema({name: typ}), unexpected_field_behavior="ignore")
            return pjson.read_json(path, parse_options=parse).column(name)
        convert = pcsv.ConvertOptions(include_columns=[name], column_types={name: pa.string()} if name in strings else {})
        return pcsv.read_csv(path, parse_options=_parse_csv(path), convert_options=convert).column(name)
    except (pa.ArrowInvalid, OSError):
        # a value arrow will not convert (a word among numbers): read as data/sources.py does, so its error names it
        return sources.read_file(path, strings).column(name)


class _Files:
    """Columns read so far, per file: a file holding every language is read once per column."""

    def __init__(self, report: DataReport, strings: tuple[str, ...]):
        self.report, self.strings = report, strings
        self.headers: dict[Path, list[str]] = {}
        self.cols: dict[tuple[Path, str], pa.ChunkedArray] = {}

    def header(self, path: Path) -> list[str]:
        if path not in self.headers:
            self.report.files += 1
            self.headers[path] = header(path)
        return self.headers[path]

    def column(self, path: Path, name: str) -> pa.ChunkedArray:
        if (path, name) not in self.cols:
            col = read_column(path, name, self.strings)
            self.report.values_read += len(col)
            self.cols[(path, name)] = col
        return self.cols[(path, name)]


@dataclass
class _Probe:
    """One language and split of a file as the task's converter sees it (tasks.Source), reading columns on demand."""

    task: TaskSpec
    index: int
    files: _Files
    path: Path
    lang: str
    split: str
    rows: np.ndarray | None  # rows of this language when the file holds several; None: all

    @property
    def where(self) -> str:
        return f"task {self.task.id!r} (tasks[{self.index}]), language {self.lang!r}, split {self.split!r}"

    @property
    def columns(self) -> set[str]:
        return set(self.files.header(self.path))

    def _field(self, name: str) -> str:
        t = self.task
        fields = {t.text_column: "text_column", t.label_column: "label_column", t.language_column: "language_column",
                  t.text_pair_column: "text_pair_column", t.group_column: "group_column"}
        return f" (tasks[{self.index}].{fields[name]})" if t.id == "local" and name in fields else ""

    def require(self, *names: str) -> None:
        cols = self.files.header(self.path)
        missing = [c for c in names if c not in cols]
        if missing:
            what = ", ".join(f"{c!r}{self._field(c)}" for c in missing)
            raise DataError(f"{self.where}: {self.path} has no column {what}; expected columns {', '.join(names)} "
                            f"(columns: {', '.join(cols) or 'none'})")

    def column(self, name: str) -> pa.ChunkedArray:
        col = self.files.column(self.path, name)
        return col if self.rows is None else col.take(pa.array(self.rows))

    def labels(self, name: str, allowed: range) -> np.ndarray:
        self.require(name)
        col = self.column(name)
        ok = pa.types.is_integer(col.type) and col.null_count == 0
        values = col.to_numpy() if ok else None
        if not ok or (len(values) and (values.min() < allowed.start or values.max() >= allowed.stop)):
            rows = self.rows if self.rows is not None else np.arange(len(col))
            sources.checked_labels(pa.table({name: col}), name, allowed, self.task, self.lang, self.split, str(self.path), rows)  # raises
        return values.astype(np.int64)

    def error(self, message: str) -> DataError:
        return DataError(f"{self.where}: {self.path} {message}")


class _TaskCheck:
    def __init__(self, task: TaskSpec, index: int, report: DataReport):
        self.task, self.i, self.report = task, index, report
        self.files = _Files(report, sources.string_columns(task))

    def locate(self, source: Path, lang: str, split: str) -> tuple[_Probe, bool]:
        """Returns (the probe of one language and split, whether its file holds every split), as sources._local_rows finds it."""
        where = f"task {self.task.id!r} (tasks[{self.i}]), language {lang!r}, split {split!r}"
        if source.is_file():
            if source.suffix[1:] not in FORMATS:
                raise DataError(f"task {self.task.id!r} (tasks[{self.i}]): source {source} has format {source.suffix!r}; "
                                f"expected one of {', '.join(FORMATS)}")
            return self.filtered(source, lang, split), True
        if (source / lang).is_dir():
            path = sources.find_split_file(source / lang, split)
            if path is None:
                alts = " or validation" if split == "dev" else ""
                raise DataError(f"{where}: no file {source / lang}/{split}{alts}.<{'|'.join(FORMATS)}>; expected one per split")
            probe = _Probe(self.task, self.i, self.files, path, lang, split, None)
            if not probe.columns:
                raise DataError(f"{where}: {path} is empty; expected a header and rows")
            return probe, False
        if self.task.id == "local":
            path = sources.find_split_file(source, split)
            if path is None:
                raise DataError(f"{where}: no folder {source / lang} and no file {source}/{split}.<{'|'.join(FORMATS)}>; "
                                "expected <source>/<lang>/<split>.<ext>, <source>/<split>.<ext> or one file")
            return self.filtered(path, lang, split), False
        raise DataError(f"{where}: no folder {source / lang}; expected <source>/<lang>/<split>.<{'|'.join(FORMATS)}>")

    def filtered(self, path: Path, lang: str, split: str) -> _Probe:
        """Returns the probe of the rows of `path` whose language column is `lang`."""
        probe = _Probe(self.task, self.i, self.files, path, lang, split, None)
        if not probe.columns:
            raise DataError(f"{probe.where}: {path} is empty; expected a header and rows")
        probe.require(self.task.language_column)
        langs = np.asarray([str(v) for v in probe.column(self.task.language_column).to_pylist()], dtype=object)
        rows = np.flatnonzero(langs == lang)
        if len(rows) == 0:
            col = f"{self.task.language_column!r} (tasks[{self.i}].language_column)"
            raise DataError(f"{probe.where}: {path} column {col} has no rows of language {lang!r}; "
                            f"expected one of the languages present: {', '.join(sorted(set(langs.tolist()))) or 'none'}")
        probe.rows = rows
        return probe

    def usable(self, probe: _Probe) -> np.ndarray:
        """Returns the task's class per row (-1: dropped), from the registry's converter."""
        _, _, labels = task_record(self.task.id).convert(probe, self.task)
        return np.asarray(labels)

    def enough(self, have: int, need: int, probe: _Probe, all_splits: bool, split: str) -> None:
        if have < need:
            dropped = " usable" if self.task.id == "marc" else ""
            what = (f"train_size + dev_size + test_size up to {split}, carved from one file" if all_splits
                    else f"tasks[{self.i}].{split}_size")
            raise DataError(f"{probe.where}: {probe.path} has {have}{dropped} rows of this language; expected at least {need} ({what})")

    def split(self, source: Path, split: str) -> None:
        """Checks every language of one split: columns, labels, sizes, and parallel alignment."""
        sizes = data.split_sizes(self.task)
        by = data.parallel_by(self.task)
        found, errors = {}, []
        for lang in self.task.languages:
            try:
                probe, all_splits = self.locate(source, lang, split)
                labels = self.usable(probe)
                need = sum(sizes[s] for s in SPLITS[: SPLITS.index(split) + 1]) if all_splits else sizes[split]
                if by is None:
                    self.enough(int((labels >= 0).sum()), need, probe, all_splits, split)
                found[lang] = (probe, labels, all_splits, need)
            except DataError as e:
                errors.append(str(e))
        self.report.errors += errors
        if by is not None and not errors and found:
            try:
                self.parallel(split, by, found)
            except DataError as e:
                self.report.errors.append(str(e))

    def parallel(self, split: str, by: str, found: dict) -> None:
        """Checks that parallel languages hold the same items and enough of them are usable in all (data._sample_parallel)."""
        rows = {}
        if self.task.id == "local":  # the sweep names the column: say which field
            for probe, *_ in found.values():
                probe.require(by)
        for lang, (probe, labels, _, _) in found.items():
            cols = {"_label": pa.array(labels)}
            if by and by in probe.columns:
                cols[by] = probe.column(by)
            rows[lang] = sources.Rows(str(probe.path), pa.table(cols), "", None, labels,
                                    probe.rows if probe.rows is not None else np.arange(len(labels)))
        keys = data.item_keys(self.task, split, by, rows)  # raises, naming the languages, on a misalignment
        first, langs = self.task.languages[0], self.task.languages
        for lang in langs[1:]:
            if set(keys[lang].tolist()) != set(keys[first].tolist()):
                only = sorted(set(keys[first].tolist()) ^ set(keys[lang].tolist()))
                raise DataError(f"task {self.task.id!r} (tasks[{self.i}]), split {split!r}: languages {first!r} and {lang!r} do not "
                                f"hold the same items ({len(only)} differ, e.g. {only[0]!r}; aligned by "
                                f"{('column ' + repr(by)) if by else 'row position'}); expected translations of the same items")
        usable = [set(keys[l][rows[l].label >= 0].tolist()) for l in langs]
        common = len(set.intersection(*usable))
        probe, _, all_splits, need = found[first]
        if common < need:
            carve = "train_size + dev_size + test_size up to this split, carved from one file" if all_splits else f"tasks[{self.i}].{split}_size"
            raise DataError(f"task {self.task.id!r} (tasks[{self.i}]), split {split!r}: {probe.path} has {common} items usable in "
                            f"every language ({', '.join(langs)}); expected at least {need} ({carve})")


def check_task(task: TaskSpec, index: int, report: DataReport) -> None:
    """Adds to `report` every problem of one task's local data; hub sources are listed for the hub check."""
    record = task_record(task.id)
    if record.convert is None:  # generated (babel)
        return
    source = task.source or record.hub
    at = f"tasks[{index}].source"
    if source is None:
        report.errors.append(f"task {task.id!r} has no source, {at}; expected a local file or folder")
        return
    path = Path(source).expanduser()
    if not path.exists():
        if task.id == "local" or source.startswith((".", "/", "~")) or "\\" in source:
            report.errors.append(f"source {source} does not exist, {at}; expected a data file or folder")
        else:
            report.hub_sources.append((at, source))
        return
    if path.is_file() and task.id != "local":
        report.errors.append(f"source {path} is a file, {at}; expected a folder <source>/<lang>/<split>.<ext> for task {task.id!r}")
        return
    checker = _TaskCheck(task, index, report)
    for split in SPLITS:
        try:
            checker.split(path, split)
        except DataError as e:  # a layout problem shared by every language (several files for one split)
            report.errors.append(str(e))
