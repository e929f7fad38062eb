"""Preflight: every kind of bad input fails before anything is computed or written, in one line each.

The table below is run through the real command line (`cli.main`, in process; a few through a
subprocess): each case asserts exit status 2, a one-line `error:` naming the file / field /
path / address, no traceback, and that nothing under the test's folder (sweep root included)
was created or touched. Data cases also check that the loader itself would fail on the same
data, so preflight neither invents errors nor misses the ones a run would hit.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from procs import free_port, kill_leftovers, live_processes
from subnet_ray.data import examples as data
from subnet_ray.data import sources
from subnet_ray.cli import main
from subnet_ray.sweep.config import load_sweep
from subnet_ray.planning.preflight import check
from test_data import write

PROJECT = Path(__file__).resolve().parent.parent
TEXT_COLUMNS = {"local": ("text",), "pawsx": ("sentence1", "sentence2"), "xnli": ("premise", "hypothesis"),
                "marc": ("review_title", "review_body")}


def rows(task: str, n: int, lang: str = "en", labels=None) -> list[dict]:
    """Returns n well-formed rows of `task` (labels cycle through the task's classes unless given)."""
    label_col = "stars" if task == "marc" else "label"
    classes = {"xnli": 3, "marc": 5}.get(task, 2)
    out = []
    for i in range(n):
        r = {c: f"{lang} {c} {i}" for c in TEXT_COLUMNS[task]}
        r[label_col] = labels[i] if labels is not None else (i % classes) + (1 if task == "marc" else 0)
        out.append(r)
    return out


def folder_data(src: Path, task: str = "local", langs=("en", "fr"), n: int = 40, fmt: str = "csv") -> Path:
    """Writes <src>/<lang>/<split>.<fmt> for every language and split; returns src."""
    for lang in langs:
        for split in data.SPLITS:
            write(src / lang / f"{split}.{fmt}", rows(task, n, lang))
    return src


def sweep_dict(src=None, task: str = "local", langs=("en", "fr"), sizes=(20, 5, 5), **top) -> dict:
    t = {"id": task, "languages": list(langs), "train_size": sizes[0], "dev_size": sizes[1], "test_size": sizes[2]}
    if src is not None:
        t["source"] = str(src)
    d = {"name": "t", "tasks": [t], "training": {"epochs": 1, "batch_size": 8, "max_length": 32},
         "influence": {"proj_dim": 16, "top_k": 5, "test_per_language": 5}, "methods": ["full"], "random_seeds": []}
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def babel_dict(**top) -> dict:
    d = sweep_dict(task="babel", langs=("xa", "xb"))
    d["tasks"][0]["babel"] = {"vocab_size": 60, "length": 8, "families": [["xa", "xb"]]}
    for k, v in top.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


def with_task(d: dict, **kw) -> dict:
    d["tasks"][0].update(kw)
    return d


def model_dir(path: Path, model_type="bert", tokenizer=True, weights=True, config=True) -> Path:
    path.mkdir(parents=True)
    if config:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if tokenizer:
        (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    if weights:
        (path / "model.safetensors").write_bytes(b"\0" * 8)
    return path


def closed_port() -> int:
    return free_port()


# Each case: a function of the test folder returning (sweep: dict | str | bytes | None, argv after the sweep,
# words the one error line must contain). The sweep file is <tmp>/sweep.yaml; the root <tmp>/root.
# `RUN` cases are also run as `run --executor local`; `DATA` cases also load through data.py.
RUN, DATA, READ_ONLY = "run", "data", "read-only"


def _c(fn, *flags):
    fn.flags = set(flags)
    return fn


CASES = {
    # ---- the sweep file itself (these worked before preflight; kept so they stay that way)
    "unknown field, with a hint": _c(lambda t: (babel_dict(training={"lrr": 1}), [], ["sweep.yaml", "training.lrr", "did you mean `training.lr`?"]), RUN),
    "unknown top-level field": _c(lambda t: ({**babel_dict(), "modle": {"name": "tiny"}}, [], ["sweep.yaml", "modle", "did you mean `model`?"])),
    "unknown nested field in a list": _c(lambda t: (with_task(babel_dict(), train_sise=3), [], ["tasks.0.train_sise", "tasks.0.train_size"])),
    "unknown task": _c(lambda t: (with_task(babel_dict(), id="xnlii"), [], ["sweep.yaml", "unknown task 'xnlii'"]), RUN),
    "unknown language": _c(lambda t: (sweep_dict(None, "pawsx", ("en", "ru")), [], ["sweep.yaml", "no language(s) ['ru']"])),
    "wrong type": _c(lambda t: (babel_dict(training={"epochs": "many"}), [], ["sweep.yaml", "training.epochs"])),
    "not yaml": _c(lambda t: ("name: [unclosed\n", [], ["sweep.yaml", "not valid YAML at line"])),
    "sweep file not UTF-8": _c(lambda t: (b"name: \xff\xfe\n", [], ["sweep.yaml", "not a text file"]), RUN),
    "not a mapping": _c(lambda t: ("- 1\n- 2\n", [], ["sweep.yaml", "expected a mapping"])),
    "missing sweep file": _c(lambda t: (None, [], ["sweep.yaml", "cannot read"]), RUN),
    "sft without full": _c(lambda t: (babel_dict(methods=["sft"]), [], ["sweep.yaml", "need 'full'"])),
    "random-sft without random seeds": _c(lambda t: (babel_dict(methods=["full", "random-sft"], random_seeds=[]), [], ["sweep.yaml", "random_seeds"])),
    "bad grid path": _c(lambda t: (babel_dict(grid={"training.lrr": [1, 2]}), [], ["sweep.yaml", "unknown setting 'training.lrr'"])),
    "bad grid value": _c(lambda t: (babel_dict(grid={"training.lr": [0.1, -1]}), [], ["sweep.yaml (grid)", "training.lr"])),
    "compose outside the languages": _c(lambda t: ({**babel_dict(), "methods": ["full", "sft"], "analysis": {"compose": [["xa", "zz"]]}}, [], ["sweep.yaml", "outside"])),
    "random test language outside": _c(lambda t: ({**babel_dict(), "analysis": {"random_test_language": "zz"}}, [], ["sweep.yaml", "random_test_language"])),
    "babel longer than max_length": _c(lambda t: (babel_dict(training={"max_length": 8}), [], ["sweep.yaml", "training.max_length=8"])),
    "non-square proj_dim": _c(lambda t: (babel_dict(influence={"proj_dim": 10}), [], ["sweep.yaml", "influence.proj_dim", "perfect square"])),
    "zero train size": _c(lambda t: (with_task(babel_dict(), train_size=0), [], ["sweep.yaml", "tasks.0.train_size", "greater than or equal to 1"])),
    "duplicate languages": _c(lambda t: (with_task(babel_dict(), languages=["xa", "xa"]), [], ["sweep.yaml", "languages must be unique"])),
    "bad sweep name": _c(lambda t: ({**babel_dict(), "name": "a b"}, [], ["sweep.yaml", "name", "pattern"])),
    "heads do not divide hidden": _c(lambda t: ({**babel_dict(), "model": {"tiny": {"hidden": 30, "heads": 4}}}, [], ["sweep.yaml", "model.tiny", "divisible"])),
    # ---- data
    "local task without source": _c(lambda t: (sweep_dict(None), [], ["tasks[0].source", "task 'local' has no source"]), RUN, DATA),
    "missing source folder": _c(lambda t: (sweep_dict(t / "nope"), [], [str(t / "nope"), "does not exist", "tasks[0].source"]), RUN, DATA),
    "pawsx language folder missing": _c(lambda t: (sweep_dict(folder_data(t / "d", "pawsx", ("en",)), "pawsx", ("en", "de")), [], [str(t / "d" / "de"), "language 'de'"]), DATA),
    "missing split file": _c(lambda t: (sweep_dict(_unlink(folder_data(t / "d"), "fr/dev.csv")), [], [str(t / "d" / "fr") + "/dev or validation", "split 'dev'"]), RUN, DATA),
    "two files for one split": _c(lambda t: (sweep_dict(_extra(folder_data(t / "d"), "en/train.jsonl")), [], [str(t / "d" / "en"), "several files", "train.csv", "train.jsonl"]), DATA),
    "no label column": _c(lambda t: (with_task(sweep_dict(folder_data(t / "d")), label_column="y"), [], [str(t / "d" / "en" / "train.csv"), "'y' (tasks[0].label_column)"]), RUN, DATA),
    "no text column (jsonl)": _c(lambda t: (with_task(sweep_dict(folder_data(t / "d", fmt="jsonl")), text_column="body"), [], ["train.jsonl", "'body' (tasks[0].text_column)"]), DATA),
    "no pair column (parquet)": _c(lambda t: (with_task(sweep_dict(folder_data(t / "d", fmt="parquet")), text_pair_column="hyp"), [], ["train.parquet", "'hyp' (tasks[0].text_pair_column)"]), DATA),
    "label out of range (csv)": _c(lambda t: (sweep_dict(_bad_labels(folder_data(t / "d"), "fr/test.csv", 7)), [], [str(t / "d" / "fr" / "test.csv"), "column 'label'", "label 7", "[0, 1]"]), RUN, DATA),
    "label out of range (parquet statistics)": _c(lambda t: (sweep_dict(_bad_labels(folder_data(t / "d", fmt="parquet"), "en/dev.parquet", -1)), [], ["dev.parquet", "label -1", "[0, 1]"]), DATA),
    "label a word (jsonl)": _c(lambda t: (sweep_dict(_bad_labels(folder_data(t / "d", fmt="jsonl"), "en/train.jsonl", "pos")), [], ["train.jsonl", "cannot read jsonl", "label"]), DATA),
    "labels above num_labels": _c(lambda t: (with_task(sweep_dict(_bad_labels(folder_data(t / "d"), "en/train.csv", 2)), num_labels=2), [], ["train.csv", "label 2", "[0, 1]"]), DATA),
    "xnli label 3 (tsv)": _c(lambda t: (sweep_dict(_bad_labels(folder_data(t / "d", "xnli", ("en",), fmt="tsv"), "en/train.tsv", 3), "xnli", ("en",)), [], ["train.tsv", "label 3", "[0, 2]"]), DATA),
    "too few rows for train_size": _c(lambda t: (sweep_dict(folder_data(t / "d", n=12)), [], [str(t / "d" / "en" / "train.csv"), "12 rows", "tasks[0].train_size"]), RUN, DATA),
    "marc: too few usable rows": _c(lambda t: (sweep_dict(_marc_threes(t / "d"), "marc", ("en",)), [], ["train.csv", "has 15 usable rows", "tasks[0].train_size"]), DATA),
    "empty file": _c(lambda t: (sweep_dict(_empty(folder_data(t / "d"), "en/test.csv")), [], [str(t / "d" / "en" / "test.csv"), "empty"]), DATA),
    "single file: language absent": _c(lambda t: (sweep_dict(_single(t / "all.csv", ("en",), 60)), [], [str(t / "all.csv"), "no rows of language 'fr'", "tasks[0].language_column"]), DATA),
    "single file: too few rows for every split": _c(lambda t: (sweep_dict(_single(t / "all.csv", ("en", "fr"), 25)), [], [str(t / "all.csv"), "train_size + dev_size + test_size"]), DATA),
    "single file of unknown format": _c(lambda t: (sweep_dict(_touch(t / "all.txt")), [], [str(t / "all.txt"), "'.txt'", "jsonl"]), DATA),
    "split file without language column": _c(lambda t: (sweep_dict(_split_files(t / "d")), [], [str(t / "d" / "train.csv"), "'language' (tasks[0].language_column)"]), DATA),
    "pawsx source is a file": _c(lambda t: (sweep_dict(_touch(t / "p.csv"), "pawsx", ("en",)), [], [str(t / "p.csv"), "is a file", "tasks[0].source"]), DATA),
    "parallel: pawsx ids differ between languages": _c(lambda t: (sweep_dict(_pawsx_ids(t / "d", {"de": 100}), "pawsx", ("en", "de")), [], ["split 'train'", "languages 'en' and 'de' do not hold the same items", "column 'id'"]), DATA),
    "parallel: one language lacks the id column": _c(lambda t: (sweep_dict(_pawsx_ids(t / "d", {}, drop_id="de"), "pawsx", ("en", "de")), [], ["language(s) de have no column 'id'"]), DATA),
    "parallel: xnli not row-aligned": _c(lambda t: (sweep_dict(_xnli_rows(t / "d", {"en": 40, "fr": 39}), "xnli", ("en", "fr")), [], ["'fr' (39 rows", "'en' (40 rows", "not row-aligned"]), DATA),
    "parallel: too few items for train_size": _c(lambda t: (sweep_dict(_xnli_rows(t / "d", {"en": 12, "fr": 12}), "xnli", ("en", "fr")), [], ["12 items usable in every language (en, fr)", "tasks[0].train_size"]), RUN, DATA),
    "parallel: group column missing": _c(lambda t: (with_task(sweep_dict(folder_data(t / "d")), group_column="item"), [], ["'item' (tasks[0].group_column)"]), DATA),
    "parallel: group column repeats an item": _c(lambda t: (with_task(sweep_dict(_grouped(t / "d", repeat=True)), group_column="item"), [], ["column 'item' repeats item", "language 'en'"]), DATA),
    "hub dataset, hub offline, not cached": _c(lambda t: (sweep_dict(None, "pawsx", ("en",)), [], ["google-research-datasets/paws-x", "tasks[0].source", "HF_HUB_OFFLINE"]), RUN),
    # ---- model
    "model directory missing": _c(lambda t: (babel_dict(model={"name": str(t / "no-model")}), [], [str(t / "no-model"), "does not exist", "model.name"]), RUN),
    "GPT-2 style model": _c(lambda t: (babel_dict(model={"name": str(model_dir(t / "gpt", "gpt2"))}), [], [str(t / "gpt"), "model_type 'gpt2' has no architecture record", "supported model_types: bert, ", "qwen3", "model.name"]), RUN),
    "model without tokenizer": _c(lambda t: (babel_dict(model={"name": str(model_dir(t / "m", tokenizer=False))}), [], [str(t / "m"), "no tokenizer", "vocab.txt"])),
    "model without weights": _c(lambda t: (babel_dict(model={"name": str(model_dir(t / "m", weights=False))}), [], [str(t / "m"), "no weights", "model.safetensors"])),
    "model folder without config.json": _c(lambda t: (babel_dict(model={"name": str(model_dir(t / "m", config=False))}), [], [str(t / "m"), "no config.json"])),
    "hub model, hub offline, not cached": _c(lambda t: (babel_dict(model={"name": "xlm-roberta-base"}), [], ["'xlm-roberta-base'", "HF_HUB_OFFLINE", str(t / "hf"), "model.name"]), RUN),
    "cached hub model of the wrong type": _c(lambda t: (babel_dict(model={"name": _cached(t, "org/gpt", "gpt2")}), [], ["'org/gpt'", "cached", "'gpt2'"])),
    "not a model name": _c(lambda t: (babel_dict(model={"name": "my model!"}), [], ["'my model!'", "model.name"])),
    # ---- devices
    "device gpu": _c(lambda t: (babel_dict(training={"device": "gpu"}), [], ["'gpu'", "training.device", "did you mean 'cuda'?"]), RUN),
    "device cuda:99": _c(lambda t: (babel_dict(training={"device": "cuda:99"}), [], ["'cuda:99'", "does not exist", "training.device"]), RUN),
    "gridded bad device": _c(lambda t: (babel_dict(grid={"training.device": ["cpu", "tpu"]}), [], ["'tpu'", "training.device"])),
    "more GPUs than the machine has": _c(lambda t: (babel_dict(resources={"gpus": 64}), [], ["resources.gpus=64", "local Ray"])),
    "more CPUs than the machine has": _c(lambda t: (babel_dict(resources={"cpus": 4096}), [], ["resources.cpus=4096", "local Ray"])),
    "more GPUs per sketching actor than the machine has": _c(lambda t: (babel_dict(influence={"actors": 2, "gpus_per_actor": 64}), [], ["influence.gpus_per_actor=64"])),
    # ---- babel, sizes
    "babel family names an undeclared language": _c(lambda t: (with_task(babel_dict(), babel={"families": [["xa", "zz"], ["xb"]]}), [], ["['zz']", "tasks[0].babel.families[0]"]), RUN),
    "babel language in two families": _c(lambda t: (with_task(babel_dict(), babel={"families": [["xa", "xb"], ["xb"]]}), [], ["'xb' is in two families", "tasks[0].babel.families"])),
    "top_k above the training set": _c(lambda t: (babel_dict(influence={"proj_dim": 16, "top_k": 41}), [], ["influence.top_k=41", "40 training examples", "at most 40"]), RUN),
    "test_per_language above test_size": _c(lambda t: (babel_dict(influence={"proj_dim": 16, "top_k": 5, "test_per_language": 6}), [], ["influence.test_per_language=6", "5 test examples per language", "at most 5"]), RUN),
    "gridded top_k above the training set": _c(lambda t: (babel_dict(grid={"influence.top_k": [5, 100]}), [], ["influence.top_k=100", "grid", "at most 40"])),
    # ---- root, tracking, Ray
    "root is a file": _c(lambda t: (babel_dict(), ["--root", str(_touch(t / "rootfile"))], [str(t / "rootfile"), "is a file", "--root"]), RUN),
    "root under a file": _c(lambda t: (babel_dict(), ["--root", str(_touch(t / "f") / "r")], [str(t / "f" / "r"), "cannot be created", "--root"]), RUN),
    "root under a read-only folder": _c(lambda t: (babel_dict(), ["--root", str(_read_only(t / "ro") / "r")], [str(t / "ro"), "not writable", "--root"]), RUN, READ_ONLY),
    "tracking server unreachable": _c(lambda t: (babel_dict(), ["--tracking-uri", f"http://127.0.0.1:{_port(t)}"], [f"http://127.0.0.1:{_port(t)}", "--tracking-uri"]), RUN),
    "tracking scheme unsupported": _c(lambda t: (babel_dict(), ["--tracking-uri", "ftp://host/x"], ["ftp://host/x", "unsupported scheme", "--tracking-uri"]), RUN),
    "tracking in-memory sqlite": _c(lambda t: (babel_dict(), ["--tracking-uri", "sqlite:///:memory:"], ["sqlite:///:memory:", "in-memory", "--tracking-uri"])),
    "tracking database is a folder": _c(lambda t: (babel_dict(), ["--tracking-uri", f"sqlite:///{_mkdir(t / 'db')}"], [str(t / "db"), "is a folder", "--tracking-uri"])),
    "Ray address refused": _c(lambda t: (babel_dict(), ["--address", f"127.0.0.1:{_port(t)}"], [f"127.0.0.1:{_port(t)}", "unreachable", "--address"])),
    "Ray address not host:port": _c(lambda t: (babel_dict(), ["--address", "ray://"], ["'ray://'", "host:port", "--address"])),
}
# Commands other than validate / run, with their own argv: (argv with {sweep} / {root}, words).
OTHER = {
    "submit to a dead dashboard": (["submit", "{demo}", "--address", "http://127.0.0.1:{port}"], ["http://127.0.0.1:{port}", "--address"]),
    "submit a sweep outside the project": (["submit", "{sweep}", "--address", "http://127.0.0.1:{port}"], ["{sweep}", "must be inside the project"]),
    "report on a root that does not exist": (["report", "{sweep}", "--root", "{root}"], ["{root}", "--root"]),
    "ui without a tracking database": (["ui", "--root", "{root}", "--port", "{port}"], ["mlflow.db", "no MLflow store"]),
    "ui on a port out of range": (["ui", "--root", "{db_root}", "--port", "70000"], ["port 70000", "1-65535"]),
    "ui on a host that is not this machine": (["ui", "--root", "{db_root}", "--host", "192.0.2.1", "--port", "{port}"], ["192.0.2.1", "--host"]),
    "ui on a busy port": (["ui", "--root", "{db_root}", "--port", "{busy}"], ["port {busy}", "in use", "--port"]),
}


def _port(t: Path) -> int:
    """Returns one closed port per test folder (cases name it twice)."""
    f = t / ".port"
    if not f.exists():
        f.write_text(str(closed_port()))
    return int(f.read_text())


def _unlink(src: Path, rel: str) -> Path:
    (src / rel).unlink()
    return src


def _extra(src: Path, rel: str) -> Path:
    write(src / rel, rows("local", 40))
    return src


def _bad_labels(src: Path, rel: str, bad) -> Path:
    path = src / rel
    lang, task = path.parent.name, "xnli" if path.suffix == ".tsv" else "local"
    good = rows(task, 40, lang)
    good[17]["label"] = bad
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(good), path)  # int column: the statistics show the bad value
    else:
        write(path, good)
    return src


def _pawsx_ids(src: Path, offset: dict, drop_id: str | None = None, n: int = 40) -> Path:
    for lang in ("en", "de"):
        for split in data.SPLITS:
            rs = [{"id": i + offset.get(lang, 0), **r} for i, r in enumerate(rows("pawsx", n, lang))]
            write(src / lang / f"{split}.csv", [{k: v for k, v in r.items() if not (k == "id" and lang == drop_id)} for r in rs])
    return src


def _xnli_rows(src: Path, counts: dict) -> Path:
    for lang, n in counts.items():
        for split in data.SPLITS:
            write(src / lang / f"{split}.tsv", rows("xnli", n, lang))
    return src


def _grouped(src: Path, repeat: bool = False) -> Path:
    for lang in ("en", "fr"):
        for split in data.SPLITS:
            write(src / lang / f"{split}.csv", [{**r, "item": (0 if repeat and i == 5 and lang == "en" else i)}
                                                for i, r in enumerate(rows("local", 40, lang))])
    return src


def _marc_threes(src: Path) -> Path:
    for split in data.SPLITS:
        write(src / "en" / f"{split}.csv", rows("marc", 40, "en", labels=[3] * 25 + [1, 5] * 7 + [2]))  # 15 usable
    return src


def _empty(src: Path, rel: str) -> Path:
    (src / rel).write_text("")
    return src


def _single(path: Path, langs, n: int) -> Path:
    write(path, [{**r, "language": lang} for lang in langs for r in rows("local", n, lang)])
    return path


def _split_files(src: Path) -> Path:
    for split in data.SPLITS:
        write(src / f"{split}.csv", rows("local", 40))
    return src


def _touch(path: Path) -> Path:
    path.write_text("x\n")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _read_only(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o555)  # as root (CI containers) it stays writable: the test then denies it through os.access
    return path


def _cached(t: Path, repo: str, model_type: str) -> str:
    snap = t / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    model_dir(snap, model_type)
    return repo


def snapshot(folder: Path) -> list:
    """Returns every path under `folder` with its size and mtime: what 'nothing written' compares."""
    return sorted((str(p.relative_to(folder)), p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """The hub is offline (as on this machine) and the Hugging Face cache is the test's own folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def assert_one_error_line(err: str, words: list[str]) -> None:
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines and all(l.startswith(("error: ", "warning: ")) for l in lines), err
    assert any(l.startswith("error: ") and all(w in l for w in words) for l in lines), f"no error line with {words}:\n{err}"


def test_the_table_has_at_least_40_kinds_of_bad_input():
    assert len(CASES) + len(OTHER) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_and_writes_nothing(case, offline_hub, capsys, monkeypatch):
    t = offline_hub
    if READ_ONLY in CASES[case].flags and os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not (Path(p) == t / "ro" and mode & os.W_OK))
    made = CASES[case](t)
    sweep, extra, words = made
    path = t / "sweep.yaml"
    if isinstance(sweep, bytes):
        path.write_bytes(sweep)
    elif sweep is not None:
        path.write_text(sweep if isinstance(sweep, str) else yaml.safe_dump(sweep))
    root = t / "root"
    root.mkdir()
    (root / "earlier.txt").write_text("a file a previous sweep left")
    if "--root" not in extra:
        extra = [*extra, "--root", str(root)]
    before = snapshot(t)
    commands = [["validate", str(path), *extra]]
    if RUN in CASES[case].flags:
        commands.append(["run", str(path), "--quiet", *extra, *([] if "--address" in extra else ["--executor", "local"])])
    for argv in commands:
        assert main(argv) == 2, argv
        assert_one_error_line(capsys.readouterr().err, words)
        assert snapshot(t) == before, f"{argv[0]} wrote or touched files"
    if DATA in CASES[case].flags:  # the loader agrees: a run would have failed on this data
        spec = load_sweep(path)
        with pytest.raises(sources.DataError):
            for s in data.SPLITS:
                data.load_examples(spec.tasks[0], s)


@pytest.mark.parametrize("case", list(OTHER))
def test_other_commands_fail_in_one_line_and_write_nothing(case, offline_hub, capsys):
    t = offline_hub
    argv, words = OTHER[case]
    sweep = t / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(babel_dict()))
    db_root = t / "with-db"
    db_root.mkdir()
    (db_root / "mlflow.db").write_bytes(b"")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    subs = {"sweep": str(sweep), "demo": str(PROJECT / "sweeps" / "demo.yaml"), "root": str(t / "no-root"), "port": str(_port(t)), "db_root": str(db_root),
            "busy": str(listener.getsockname()[1])}
    try:
        before = snapshot(t)
        assert main([a.format(**subs) for a in argv]) == 2
        assert_one_error_line(capsys.readouterr().err, [w.format(**subs) for w in words])
        assert snapshot(t) == before
        assert not (t / "no-root").exists()
    finally:
        listener.close()


def test_a_missing_text_fails_the_run_in_one_line_before_anything_is_written(offline_hub, capsys):
    """Text values are not read by preflight (headers and counts only): an empty text in a sampled
    row is found when the run loads its data, which it does before creating the root or starting Ray."""
    t = offline_hub
    src = folder_data(t / "d", fmt="jsonl", n=20)
    bad = rows("local", 20, "fr")
    bad[3]["text"] = None
    write(src / "fr" / "train.jsonl", bad)
    path = _write(t / "s.yaml", sweep_dict(src))
    root = t / "root"
    assert main(["validate", str(path), "--root", str(root)]) == 0
    capsys.readouterr()
    before = snapshot(t)
    assert main(["run", str(path), "--root", str(root), "--executor", "local", "--quiet"]) == 2
    assert_one_error_line(capsys.readouterr().err, [str(src / "fr" / "train.jsonl"), "column 'text' is empty at row 3"])
    assert snapshot(t) == before and not root.exists()


def test_status_on_a_missing_root_creates_nothing(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(babel_dict()))
    assert main(["status", str(path), "--root", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert "0/" in out and "no store there yet" in out and "[done]" not in out
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty-root").mkdir()
    assert main(["status", str(path), "--root", str(tmp_path / "empty-root")]) == 0
    assert list((tmp_path / "empty-root").iterdir()) == []


def subnet_ray(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "subnet_ray.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("case", ["no label column", "model directory missing", "Ray address refused"])
def test_no_traceback_from_a_real_process(case, offline_hub):
    t = offline_hub
    sweep, extra, words = CASES[case](t)
    (t / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    before = snapshot(t)
    r = subnet_ray("validate", str(t / "sweep.yaml"), "--root", str(t / "root"), *extra, env={"HF_HUB_CACHE": str(t / "hf")})
    assert r.returncode == 2, r.stderr
    assert_one_error_line(r.stderr, words)
    assert snapshot(t) == before and not (t / "root").exists()


def test_debug_shows_the_traceback_and_unexpected_errors_keep_theirs(offline_hub, capsys, monkeypatch):
    t = offline_hub
    (t / "s.yaml").write_text(yaml.safe_dump(babel_dict(training={"device": "gpu"})))
    for argv in (["validate", str(t / "s.yaml"), "--root", str(t / "r"), "--debug"], ["--debug", "validate", str(t / "s.yaml")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "PreflightError" in err and "error: device 'gpu'" in err
    import subnet_ray.commands as commands

    def boom(*a, **k):
        raise RuntimeError("a bug, not a bad input")

    monkeypatch.setattr(commands, "check", boom)
    with pytest.raises(RuntimeError, match="a bug"):  # not swallowed into a one-line error
        main(["validate", str(t / "s.yaml"), "--root", str(t / "r")])


@pytest.mark.parametrize("name", ["xnli", "pawsx", "marc"])
def test_paper_sweeps_need_the_hub_or_a_cache_here_and_pass_for_a_cluster(name, offline_hub, capsys):
    path = str(PROJECT / "sweeps" / f"{name}.yaml")
    root = str(offline_hub / "root")
    assert main(["validate", path, "--root", root]) == 2  # here: no hub, no cached model, data or GPU
    err = capsys.readouterr().err
    assert_one_error_line(err, ["'xlm-roberta-base'", "model.name", "HF_HUB_OFFLINE"])
    assert_one_error_line(err, ["hub dataset", "tasks[0].source"])
    assert main(["validate", path, "--root", root, "--remote"]) == 0  # on the cluster: warned, not refused
    err = capsys.readouterr().err
    assert "error:" not in err and "warning: model 'xlm-roberta-base', model.name: not checked" in err
    _cached(offline_hub, "xlm-roberta-base", "xlm-roberta")  # once cached, the model is checked offline
    assert main(["validate", path, "--root", root, "--remote"]) == 0
    out, err = capsys.readouterr()
    assert "model (offline: local HF cache)" in out and "xlm-roberta-base" not in err


def test_what_a_run_does_not_use_is_not_refused(tmp_path):
    """A cluster's GPUs, or GPUs asked of a Ray the run does not start, are not this machine's business."""
    spec = load_sweep(_write(tmp_path / "s.yaml", babel_dict(resources={"gpus": 64, "cpus": 4096}, training={"device": "cuda:7"})))
    assert check(spec, local_run=False).errors == []  # validate --remote, submit
    errors = check(spec, local_run=True, local_ray=False).errors  # run --executor local: no Ray, so no Ray resources
    assert len(errors) == 1 and "device 'cuda:7' does not exist" in errors[0], errors  # (on a machine with < 8 GPUs)
    cpu = spec.model_copy(update={"training": spec.training.model_copy(update={"device": "cpu"})})
    assert check(cpu, local_run=True, local_ray=False).errors == []


def test_devices_on_a_one_gpu_machine(tmp_path, monkeypatch):
    """With one CUDA device (simulated: this machine may have none), cuda and cuda:0 pass, cuda:1 and 2 GPUs per trial do not."""
    import subnet_ray.planning.preflight as pre

    monkeypatch.setattr(pre, "_cuda_devices", lambda: 1)
    spec = load_sweep(_write(tmp_path / "s.yaml", babel_dict(resources={"gpus": 1})))

    def errors(device: str, gpus: float = 1) -> list[str]:
        s = spec.model_copy(update={"training": spec.training.model_copy(update={"device": device}),
                                    "resources": spec.resources.model_copy(update={"gpus": gpus})})
        return check(s, local_run=True, local_ray=True).errors

    assert errors("cuda") == [] and errors("cuda:0") == [] and errors("cuda", 0.5) == []
    assert errors("cuda:1") == ["device 'cuda:1' does not exist: this machine has 1 CUDA device(s), training.device; expected cpu or cuda:0..0"]
    assert errors("cuda", 2) == ["resources.gpus=2 is more than this machine's 1 CUDA device(s), resources.gpus; expected at most 1 "
                                 "for a local Ray (the work would wait forever)"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"subnet-ray {version('subnet-ray')}"


# ---- preflight passes what runs, reads headers and counts ---------------------------------------


LAYOUTS = {
    "folders": lambda t, fmt: folder_data(t / "d", fmt=fmt),
    "a file per split": lambda t, fmt: _split_files_lang(t / "d", fmt),
    "one file": lambda t, fmt: _single(t / f"all.{fmt}", ("en", "fr"), 40),
}


def _split_files_lang(src: Path, fmt: str) -> Path:
    for split in data.SPLITS:
        write(src / f"{split}.{fmt}", [{**r, "language": l} for l in ("en", "fr") for r in rows("local", 40, l)])
    return src


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_good_local_data_passes_and_loads(layout, fmt, tmp_path):
    src = LAYOUTS[layout](tmp_path, fmt)
    spec = load_sweep(_write(tmp_path / "s.yaml", sweep_dict(src)))
    pf = check(spec, root=str(tmp_path / "root"))
    assert pf.errors == [] and pf.warnings == []
    assert pf.files == {"one file": 1, "a file per split": 3, "folders": 6}[layout]  # each file read once
    for s in data.SPLITS:  # and the run's loader agrees
        assert len(data.load_examples(spec.tasks[0], s)) == 2 * {"train": 20, "dev": 5, "test": 5}[s]
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_parallel_data_in_another_order_per_language_passes_and_loads(fmt, tmp_path):
    """PAWS-X items named by string ids, in a different row order in each language: aligned, so it passes;
    only the label and id columns are read (two values per row)."""
    import random

    for lang in ("en", "de"):
        for split in data.SPLITS:
            rs = [{"id": f"p{i}", **r} for i, r in enumerate(rows("pawsx", 40, lang))]
            random.Random(lang + split).shuffle(rs)
            write(tmp_path / "d" / lang / f"{split}.{fmt}", rs)
    spec = load_sweep(_write(tmp_path / "s.yaml", sweep_dict(tmp_path / "d", "pawsx", ("en", "de"))))
    pf = check(spec)
    assert pf.errors == [] and pf.files == 6 and pf.values_read == 6 * 40 * 2
    train = data.load_examples(spec.tasks[0], "train")
    assert len(train) == 40 and {e.language for e in train} == {"en", "de"}


def _write(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def test_demo_preflight_is_fast_and_reads_no_data_file(tmp_path, monkeypatch):
    def whole_read(*a, **k):
        raise AssertionError("preflight read a whole data file")

    monkeypatch.setattr(sources, "read_file", whole_read)
    monkeypatch.setattr(data, "load_examples", whole_read)
    spec = load_sweep(PROJECT / "sweeps" / "demo.yaml")
    t0 = time.perf_counter()
    pf = check(spec, root=str(tmp_path / "root"))
    wall = time.perf_counter() - t0
    assert pf.errors == [] and wall < 2.0 and pf.seconds < 2.0
    assert pf.values_read == 0 and "root" in pf.checked and "tracking" in pf.checked
    assert f"in {pf.seconds:.2f} s" in pf.summary()


def test_large_data_is_checked_from_metadata_and_label_columns(tmp_path, monkeypatch):
    """200k rows per language and split of long texts: only the label column is read (one value per
    row), the whole-file reader is never called and the check stays under 2 s."""
    n, text = 200_000, "x" * 200
    table = pa.table({"text": pa.array([text] * n), "label": pa.array([i % 2 for i in range(n)], pa.int64())})
    csv_lines = "text,label\n" + "".join(f"{text},{i % 2}\n" for i in range(20_000))
    for lang in ("en", "fr"):
        for split in data.SPLITS:
            (tmp_path / "pq" / lang).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp_path / "pq" / lang / f"{split}.parquet", row_group_size=50_000)
            (tmp_path / "csv" / lang).mkdir(parents=True, exist_ok=True)
            (tmp_path / "csv" / lang / f"{split}.csv").write_text(csv_lines)

    def whole_read(*a, **k):
        raise AssertionError("preflight read a whole data file")

    monkeypatch.setattr(sources, "read_file", whole_read)
    pf = check(load_sweep(_write(tmp_path / "p.yaml", sweep_dict(tmp_path / "pq", sizes=(200_000, 5, 5)))))
    assert pf.errors == [] and pf.files == 6 and pf.values_read == 6 * n and pf.seconds < 2.0  # the label column only
    pf = check(load_sweep(_write(tmp_path / "c.yaml", sweep_dict(tmp_path / "csv", sizes=(20_000, 5, 5)))))
    assert pf.errors == [] and pf.values_read == 6 * 20_000 and pf.seconds < 2.0  # one label value per row
    pf = check(load_sweep(_write(tmp_path / "c2.yaml", sweep_dict(tmp_path / "pq", sizes=(200_001, 5, 5)))))
    assert len(pf.errors) == 2 and all("200000 rows" in e and "at least 200001" in e for e in pf.errors)


def test_unreachable_address_fails_within_seconds_without_ray(tmp_path, offline_hub, capsys):
    """An unroutable address (nothing answers, not even a refusal) fails in the preflight's timeout, before Ray is imported."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(babel_dict()))
    t0 = time.monotonic()
    r = subnet_ray("run", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "root"), "--address", "10.255.255.1:6379",
                   "--quiet")
    took = time.monotonic() - t0
    assert r.returncode == 2 and "10.255.255.1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) <= 2 and took < 30  # one error line (plus warnings), no Ray log flood
    assert not (tmp_path / "root").exists()


# ---- ui --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, serving", [
    pytest.param(signal.SIGTERM, True, id="SIGTERM-while-serving", marks=pytest.mark.slow),  # ~10-40 s to come up here
    pytest.param(signal.SIGHUP, False, id="SIGHUP-while-starting"),
])
def test_ui_forwards_signals_and_leaves_no_server(sig, serving, tmp_path):
    from subnet_ray.orchestration.tracking_store import TrackingUnreachable, check_tracking_uri

    root = tmp_path / "root"
    root.mkdir()
    (root / "mlflow.db").write_bytes(b"")  # an empty SQLite database: mlflow creates its tables
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen([sys.executable, "-m", "subnet_ray.cli", "ui", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    marker = str(root / "mlflow.db")
    group = None
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line + proc.stderr.read()
        deadline = time.monotonic() + 60
        while not live_processes(marker=marker):  # the MLflow server (its command line names the store)
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        group = os.getpgid(live_processes(marker=marker)[0])  # its own process group: workers included
        assert group != os.getpgid(proc.pid)
        if serving:
            deadline = time.monotonic() + 240
            while True:
                try:
                    check_tracking_uri(f"http://127.0.0.1:{port}", timeout=5)
                    break
                except TrackingUnreachable:
                    assert time.monotonic() < deadline and proc.poll() is None, "the UI did not come up"
                    time.sleep(0.5)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
        deadline = time.monotonic() + 10
        while live_processes(pgid=group, marker=marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert live_processes(pgid=group, marker=marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_leftovers(pgid=group, marker=marker)
