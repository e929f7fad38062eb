"""Preflight of a task's data: files exist, hold the named columns, labels in range, enough rows.

Reads headers, parquet metadata and the label (and language) columns only, never the text:
a parquet file whose statistics show its labels in range is not read at all. Each problem is
one line naming the task, language, split, file and column, and what was expected. The run
itself still loads through data.py; the file layout, label rules and messages mirror it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import data
from .config import TaskSpec
from .data import FORMATS, HUB_SOURCES, SPLITS, DataError


@dataclass
class DataReport:
    """What the data preflight found and how much it read."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hub_sources: list[tuple[str, str]] = field(default_factory=list)  # (where in the sweep, hub dataset id)
    values_read: int = 0  # label / language values read from files (0: metadata only)
    files: int = 0


def _parse_csv(path: Path):
    import pyarrow.csv as pcsv

    if path.suffix == ".tsv":
        return pcsv.ParseOptions(delimiter="\t", quote_char=False)
    return pcsv.ParseOptions()


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
                            raise DataError(f"{path}: first row is {type(row).__name__}, expected a JSON object per line")
                        return list(row)
            return []
        import pyarrow.csv as pcsv

        if path.stat().st_size == 0:
            return []
        read = pcsv.ReadOptions(block_size=1 << 16)
        return pcsv.open_csv(path, read_options=read, parse_options=_parse_csv(path)).schema.names
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read {path.suffix[1:]} file header: {e}") from None


def columns(path: Path, names: list[str], strings: tuple[str, ...]) -> pa.Table:
    """Returns only the columns `names` of a data file (the text columns are never read)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.ParquetFile(path).read(columns=names)
        if path.suffix == ".jsonl":
            types = {n: (pa.string() if n in strings else pa.int64()) for n in names}
            parse = pjson.ParseOptions(explicit_schema=pa.schema(types), unexpected_field_behavior="ignore")
            return pjson.read_json(path, parse_options=parse)
        convert = pcsv.ConvertOptions(include_columns=names, column_types={c: pa.string() for c in strings if c in names})
        return pcsv.read_csv(path, parse_options=_parse_csv(path), convert_options=convert)
    except (pa.ArrowInvalid, OSError):
        # a value arrow will not convert (a word in the label column): read it as data.py does,
        # so the message names the row
        return data._read_file(path, strings).select(names)


def _stats_in_range(path: Path, name: str, allowed: range) -> int | None:
    """Returns the row count if parquet statistics prove column `name` holds no null and only ints in `allowed`."""
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    idx = meta.schema.names.index(name)
    if not pa.types.is_integer(meta.schema.to_arrow_schema().field(name).type):
        return None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(idx).statistics
        if meta.row_group(g).num_rows == 0:
            continue
        if st is None or not st.has_min_max or st.null_count or st.min < allowed.start or st.max >= allowed.stop:
            return None
    return meta.num_rows


def _where(task: TaskSpec, i: int, lang: str, split: str) -> str:
    return f"task {task.id!r} (tasks[{i}]), language {lang!r}, split {split!r}"


def _label_rule(task: TaskSpec, cols: list[str]) -> tuple[str, range, list[str]]:
    """Returns (label column, allowed labels, required columns) of the task, given a file's columns."""
    if task.id == "xnli":
        return "label", range(3), ["premise", "hypothesis", "label"]
    if task.id == "pawsx":
        return "label", range(2), ["sentence1", "sentence2", "label"]
    if task.id == "marc":
        if "stars" in cols or not {"text", "label"} <= set(cols):
            return "stars", range(1, 6), ["stars", "review_title", "review_body"]
        return "label", range(0, 6), ["text", "label"]
    need = [task.text_column, task.label_column] + ([task.text_pair_column] if task.text_pair_column else [])
    return task.label_column, range(task.num_labels), need


def _usable(task: TaskSpec, name: str, labels: np.ndarray, where: str) -> int:
    """Returns how many rows keep their label under the task's mapping (MARC drops 3 stars)."""
    if task.id != "marc":
        return len(labels)
    stars = labels
    if name == "label":  # the SetFit port: label = stars - 1, or stars in early revisions
        if (labels == 5).any() and (labels == 0).any():
            raise DataError(f"{where} column 'label' holds both 0 and 5; cannot tell stars - 1 from stars")
        stars = labels if (labels == 5).any() else labels + 1
    return int((stars != 3).sum())


class _Checker:
    def __init__(self, task: TaskSpec, index: int, report: DataReport):
        self.task, self.i, self.report = task, index, report
        self.strings = data._string_columns(task)
        self.counts: dict[Path, dict[str, int]] = {}  # a file holding every language is read once, not once per language

    def _field(self, name: str) -> str:
        fields = {self.task.text_column: "text_column", self.task.label_column: "label_column",
                  self.task.language_column: "language_column", self.task.text_pair_column: "text_pair_column"}
        return f" (tasks[{self.i}].{fields[name]})" if self.task.id == "local" and name in fields else ""

    def _require(self, path: Path, cols: list[str], need: list[str], where: str) -> None:
        missing = [c for c in need if c not in cols]
        if missing:
            names = ", ".join(f"{c!r}{self._field(c)}" for c in missing)
            raise DataError(f"{where}: {path} has no column {names}; expected columns {', '.join(need)} (columns: {', '.join(cols) or 'none'})")

    def _labels(self, path: Path, lang: str, split: str, where: str, lang_filter: bool) -> dict[str, int]:
        """Returns usable rows per language (just `lang` unless the file holds all languages)."""
        if lang_filter and path in self.counts:
            return self.counts[path]
        self.report.files += 1
        cols = header(path)
        if not cols:
            raise DataError(f"{where}: {path} is empty; expected a header and rows")
        name, allowed, need = _label_rule(self.task, cols)
        lang_col = self.task.language_column
        self._require(path, cols, need + ([lang_col] if lang_filter else []), where)
        if not lang_filter and self.task.id != "marc":
            n = _stats_in_range(path, name, allowed)
            if n is not None:
                if n == 0:
                    raise DataError(f"{where}: {path} has no rows; expected at least {data._sizes(self.task)[split]}")
                return {lang: n}
        table = columns(path, [name] + ([lang_col] if lang_filter else []), self.strings)
        self.report.values_read += table.num_rows * table.num_columns
        langs = np.asarray([str(v) for v in table.column(lang_col).to_pylist()], dtype=object) if lang_filter else None
        label_col = table.column(name)
        ok = pa.types.is_integer(label_col.type) and label_col.null_count == 0
        values = label_col.to_numpy(zero_copy_only=False) if ok else None
        if not ok or (len(values) and (values.min() < allowed.start or values.max() >= allowed.stop)):
            data._labels(table, name, allowed, self.task, lang, split, str(path), np.arange(table.num_rows))  # raises, naming the row
        if lang_filter:
            self.counts[path] = {l: _usable(self.task, name, values[langs == l], where) for l in set(langs.tolist())}
            return self.counts[path]
        return {lang: _usable(self.task, name, values, where)}

    def _enough(self, have: int, need: int, where: str, path: Path, what: str) -> None:
        if have < need:
            rows = "usable rows (3-star reviews are dropped)" if self.task.id == "marc" else "rows"
            raise DataError(f"{where}: {path} has {have} {rows} of this language; expected at least {need} ({what})")

    def split(self, source: Path, lang: str, split: str) -> None:
        """Checks one language and split of a local source (not the single-file layout)."""
        where = _where(self.task, self.i, lang, split)
        need = data._sizes(self.task)[split]
        size = f"tasks[{self.i}].{split}_size"
        if (source / lang).is_dir():
            path = data._find_split_file(source / lang, split)
            if path is None:
                alts = " or validation" if split == "dev" else ""
                raise DataError(f"{where}: no file {source / lang}/{split}{alts}.<{'|'.join(FORMATS)}>; expected one per split")
            self._enough(self._labels(path, lang, split, where, False)[lang], need, where, path, size)
            return
        if self.task.id == "local":
            path = data._find_split_file(source, split)
            if path is None:
                raise DataError(f"{where}: no folder {source / lang} and no file {source}/{split}.<{'|'.join(FORMATS)}>; "
                                f"expected <source>/<lang>/<split>.<ext>, <source>/<split>.<ext> or one file")
            counts = self._labels(path, lang, split, where, True)
            self._language_present(counts, lang, where, path)
            self._enough(counts.get(lang, 0), need, where, path, size)
            return
        raise DataError(f"{where}: no folder {source / lang}; expected <source>/<lang>/<split>.<{'|'.join(FORMATS)}>")

    def _language_present(self, counts: dict, lang: str, where: str, path: Path) -> None:
        if lang not in counts:
            col = f"{self.task.language_column!r} (tasks[{self.i}].language_column)"
            raise DataError(f"{where}: {path} column {col} has no rows of language {lang!r}; "
                            f"expected one of the languages present: {', '.join(sorted(counts)) or 'none'}")

    def single_file(self, path: Path) -> None:
        """Checks a single file holding every language and split (train, dev, test carved from it)."""
        if path.suffix[1:] not in FORMATS:
            raise DataError(f"task {self.task.id!r} (tasks[{self.i}]): source {path} has format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
        where = f"task {self.task.id!r} (tasks[{self.i}])"
        counts = self._labels(path, self.task.languages[0], "train", where, True)
        need = sum(data._sizes(self.task).values())
        for lang in self.task.languages:
            w = f"{where}, language {lang!r}"
            self._language_present(counts, lang, w, path)
            self._enough(counts[lang], need, w, path, "train_size + dev_size + test_size, carved from one file")


def check_task(task: TaskSpec, index: int, report: DataReport) -> None:
    """Adds to `report` every problem of one task's local data; hub sources are listed for the hub check."""
    if task.id == "babel":
        return
    source = task.source or HUB_SOURCES.get(task.id)
    at = f"tasks[{index}].source"
    if source is None:
        report.errors.append(f"task {task.id!r} has no source, {at}; expected a local file or folder for the local task")
        return
    path = Path(source).expanduser()
    if not path.exists():
        if task.id == "local" or source.startswith((".", "/", "~")) or "\\" in source:
            report.errors.append(f"source {source} does not exist, {at}; expected a data file or folder")
        else:
            report.hub_sources.append((at, source))
        return
    checker = _Checker(task, index, report)
    if path.is_file():
        if task.id != "local":
            report.errors.append(f"source {path} is a file, {at}; expected a folder <source>/<lang>/<split>.<ext> for task {task.id!r}")
            return
        try:
            checker.single_file(path)
        except DataError as e:
            report.errors.append(str(e))
        return
    for lang in task.languages:
        for split in SPLITS:
            try:
                checker.split(path, lang, split)
            except DataError as e:
                report.errors.append(str(e))
