"""Preflight: every error a sweep would hit at run time, found before anything is computed or written.

`check(spec, ...)` looks at the sweep's data (preflight_data.py), its model (a local directory
or hub id that resolves to a config of a model_type with an architecture record, models.architectures,
with a tokenizer; the local Hugging
Face cache when the hub is unreachable), its devices, babel families, whether `influence.top_k`
and `influence.test_per_language` fit the data, and, when asked, the root, the tracking store
and the Ray address or dashboard, each within a few seconds. It reads headers and counts, never
whole data sets, writes nothing, imports neither torch (unless a CUDA / MPS device must be
checked), ray nor mlflow, and returns every problem, one line each:
`<what is wrong>, <where (file, field, path, address)>; expected <what>`.

`influence.top_k` above the training set or `influence.test_per_language` above a task's
`test_size` is an error: the run would otherwise cap them silently (top-k of every training
example makes the language shares meaningless).
"""
from __future__ import annotations

import difflib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..models.architectures import unsupported
from ..sweep.config import SweepSpec, branches
from .preflight_data import DataReport, check_task

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "spm.model", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
DEVICES = ("cpu", "cuda", "cuda:N", "mps")


class PreflightError(ValueError):
    """A sweep that would fail at run time; one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Preflight:
    """What preflight found: errors (the run would fail), warnings, what it checked and how long it took."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    values_read: int = 0  # label / language values read from data files (0: headers and metadata only)
    files: int = 0

    def summary(self) -> str:
        """Returns one line: what was checked, how much was read and how long it took."""
        read = f"{self.files} data file(s), {self.values_read} label values read" if self.files else "no data files"
        return f"preflight: {', '.join(self.checked)} checked ({read}) in {self.seconds:.2f} s"

    def raise_errors(self) -> None:
        """Raises PreflightError listing every error, if there is one."""
        if self.errors:
            raise PreflightError(self.errors)


def _bounded(probe: Callable[[], object], timeout: float) -> tuple[object, BaseException | None, bool]:
    """Returns (result, exception, timed_out) of `probe` run in a thread given at most `timeout` s (DNS included)."""
    out: list = [None, None]

    def run() -> None:
        try:
            out[0] = probe()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            out[1] = e

    t = threading.Thread(target=run, daemon=True, name="preflight-probe")
    t.start()
    t.join(timeout)
    return out[0], out[1], t.is_alive()


# ---- the Hugging Face hub and its cache -----------------------------------------------------------


def hub_endpoint() -> str:
    """Returns the hub URL ($HF_ENDPOINT or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline_reason(timeout: float) -> str | None:
    """Returns why the hub cannot be used from here (None if it answers a TCP connection in `timeout` s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlsplit

    parts = urlsplit(hub_endpoint())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _, err, slow = _bounded(lambda: socket.create_connection((parts.hostname, port), timeout=timeout).close(), timeout)
    if slow:
        return f"{hub_endpoint()}: no answer within {timeout:g} s"
    if err is not None:
        return f"{hub_endpoint()}: {getattr(err, 'strerror', None) or err}"
    return None


def hub_cache() -> Path:
    """Returns the Hugging Face hub cache folder ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


def _dataset_cached(pattern: str) -> bool:
    """Returns whether the hub or datasets cache holds a dataset matching `pattern` (org/name, * allowed)."""
    import fnmatch

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", hub_cache().parent / "datasets")).expanduser()
    for folder, name in ((hub_cache(), f"datasets--{pattern.replace('/', '--')}"), (datasets_cache, pattern.replace("/", "___") + "*")):
        if folder.is_dir() and any(fnmatch.fnmatch(p.name, name) for p in folder.iterdir()):
            return True
    return False


def cached_snapshot(repo: str, kind: str = "model") -> Path | None:
    """Returns the newest cached snapshot folder of a hub repo, or None if the cache holds none."""
    snaps = hub_cache() / f"{kind}s--{repo.replace('/', '--')}" / "snapshots"
    found = sorted((p for p in snaps.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) if snaps.is_dir() else []
    return found[-1] if found else None


# ---- model, device ---------------------------------------------------------------------------------


def check_model_dir(folder: Path, what: str) -> list[str]:
    """Returns the problems of a local model folder: config.json of a supported architecture, weights, tokenizer files."""
    config = folder / "config.json"
    if not folder.is_dir():
        return [f"{what} {folder} is not a folder, model.name; expected a Hugging Face model directory"]
    if not config.is_file():
        return [f"{what} {folder} has no config.json, model.name; expected a Hugging Face model directory (config.json, weights, tokenizer)"]
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        return [f"{what} {config} is not a JSON model config ({e}), model.name; expected a Hugging Face config.json"]
    errors = []
    why = unsupported(model_type)
    if why is not None:
        errors.append(f"{what} {folder}: {why}, model.name; expected a model of a supported architecture")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        errors.append(f"{what} {folder} has no tokenizer, model.name; expected one of {', '.join(TOKENIZER_FILES)}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        errors.append(f"{what} {folder} has no weights, model.name; expected one of {', '.join(WEIGHT_FILES)}")
    return errors


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.sep in name and Path(name).parent.exists()


def check_model(name: str, hub_offline: Callable[[], str | None], local_run: bool) -> tuple[list[str], list[str], str]:
    """Returns (errors, warnings, how it was checked) for `model.name`."""
    if name == "tiny":
        return [], [], "model (tiny, built locally)"
    path = Path(name).expanduser()
    if path.exists():
        return check_model_dir(path, "model directory"), [], "model (local directory)"
    if _looks_like_path(name):
        return [f"model directory {name} does not exist, model.name; expected a local model directory, a hub id or 'tiny'"], [], "model"
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return [f"model {name!r} is neither a local directory nor a hub id, model.name; expected e.g. xlm-roberta-base or org/name"], [], "model"
    offline = hub_offline()
    if offline is None:
        return (*_check_model_online(name), "model (hub)")
    snap = cached_snapshot(name)
    if snap is not None:
        return check_model_dir(snap, f"model {name!r} (cached, hub offline: {offline}):"), [], "model (offline: local HF cache)"
    if local_run:
        return [f"model {name!r} is not in the local Hugging Face cache ({hub_cache()}) and the hub is unreachable ({offline}), "
                f"model.name; expected a cached or local model directory"], [], "model (offline)"
    return [], [f"model {name!r}, model.name: not checked (hub unreachable from here: {offline}; not in {hub_cache()}); "
                "where the sweep runs, the hub must answer or the cache hold it"], "model (offline)"


def _check_model_online(name: str, timeout: float = 10.0) -> tuple[list[str], list[str]]:
    def fetch():
        from huggingface_hub import hf_hub_download, list_repo_files

        files = list_repo_files(name)
        config = json.loads(Path(hf_hub_download(name, "config.json")).read_text()) if "config.json" in files else None
        return files, config

    result, err, slow = _bounded(fetch, timeout)
    if slow or err is not None:
        why = f"no answer within {timeout:g} s" if slow else f"{type(err).__name__}: {err}"
        return [f"model {name!r} cannot be found on the hub {hub_endpoint()} ({why}), model.name; expected a hub model id or local directory"], []
    files, config = result
    if config is None:
        return [f"model {name!r} on the hub has no config.json, model.name; expected a Hugging Face model"], []
    errors = []
    why = unsupported(config.get("model_type"))
    if why is not None:
        errors.append(f"model {name!r}: {why}, model.name; expected a model of a supported architecture")
    if not set(TOKENIZER_FILES) & set(files):
        errors.append(f"model {name!r} on the hub has no tokenizer, model.name; expected one of {', '.join(TOKENIZER_FILES)}")
    return errors, []


def _cuda_devices() -> int:
    import torch  # only here: a CPU sweep's preflight stays free of torch's import time

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str, where: str, local_run: bool) -> list[str]:
    """Returns the problems of a torch device name, and (local_run) of using it on this machine."""
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device)
    if m is None or (m.group(1) != "cuda" and m.group(2)):
        close = difflib.get_close_matches(device, ["cpu", "cuda", "mps"], n=1, cutoff=0.3)
        hint = f"; did you mean {('cuda' if device.startswith('gpu') else close[0])!r}?" if close or device.startswith("gpu") else ""
        return [f"device {device!r} is not a torch device, {where}; expected one of {', '.join(DEVICES)}{hint}"]
    if not local_run or m.group(1) == "cpu":
        return []
    if m.group(1) == "mps":
        import torch

        ok = torch.backends.mps.is_available()
        return [] if ok else [f"device 'mps' is not available on this machine, {where}; expected cpu (or run where MPS exists)"]
    n = _cuda_devices()
    if int(m.group(2) or 0) < n:
        return []
    have = f"{n} CUDA device(s)" if n else "no CUDA"
    return [f"device {device!r} does not exist: this machine has {have}, {where}; expected cpu"
            + (f" or cuda:0..{n - 1}" if n else " (or validate with --remote for a sweep that runs on a cluster)")]


def check_local_ray(spec: SweepSpec) -> list[str]:
    """Returns the resources a sweep asks of a local Ray that this machine lacks (its trials would wait forever)."""
    errors = []
    cpus = os.cpu_count() or 1
    if spec.resources.cpus > cpus:
        errors.append(f"resources.cpus={spec.resources.cpus:g} per trial is more than this machine's {cpus} CPUs, resources.cpus; "
                      f"expected at most {cpus} for a local Ray (the trials would wait forever)")
    asks = [(f, v) for f, v in (("resources.gpus", spec.resources.gpus),
                                ("influence.gpus_per_actor", spec.influence.gpus_per_actor if spec.influence.actors > 1 else 0.0)) if v > 0]
    if asks:
        n = _cuda_devices()
        errors += [f"{f}={v:g} is more than this machine's {n} CUDA device(s), {f}; expected at most {n} for a local Ray "
                   "(the work would wait forever)" for f, v in asks if v > n]
    return errors


# ---- the sweep -----------------------------------------------------------------------------------


def check_babel(spec: SweepSpec) -> list[str]:
    """Returns the problems of babel tasks' families: every language named must be one the task declares."""
    from ..data.babel import family_names

    errors = []
    for i, t in enumerate(spec.tasks):
        if t.id != "babel":
            continue
        strays = []
        for j, group in enumerate(t.babel.families or []):
            stray = [l for l in group if l not in t.languages]
            if stray:
                strays.append(f"babel family {group} names undeclared language(s) {stray}, tasks[{i}].babel.families[{j}]; "
                              f"expected languages of tasks[{i}].languages {t.languages}")
        errors += strays
        if not strays:
            try:
                family_names(t.babel, list(t.languages))
            except ValueError as e:
                errors.append(f"{e}, tasks[{i}].babel.families; expected each language in at most one family")
    return errors


def check_fits(spec: SweepSpec) -> list[str]:
    """Returns where `influence.top_k` or `influence.test_per_language` exceed the data of a branch."""
    errors = []
    for values, b in branches(spec):
        grid = f" (grid {values})" if values else ""
        for i, t in enumerate(b.tasks):
            n_train = t.train_size * len(t.languages)
            if b.influence.top_k > n_train:
                errors.append(f"influence.top_k={b.influence.top_k} is more than the {n_train} training examples of task "
                              f"{t.id!r} ({len(t.languages)} languages x tasks[{i}].train_size {t.train_size}){grid}, influence.top_k; "
                              f"expected at most {n_train} (it would be capped there)")
            if b.influence.test_per_language > t.test_size:
                errors.append(f"influence.test_per_language={b.influence.test_per_language} is more than the {t.test_size} test "
                              f"examples per language of task {t.id!r}{grid}, influence.test_per_language; expected at most {t.test_size} "
                              f"(it would be capped there) or a larger tasks[{i}].test_size")
    return errors


def check_root(root: str) -> list[str]:
    """Returns the problems of a sweep root: it (or the folder it would be created in) must be a writable folder."""
    if "://" in root and not root.startswith("file://"):
        return []  # an object store: fsspec and its credentials decide; nothing to test without writing
    p = Path(root.removeprefix("file://")).expanduser().absolute()
    if p.exists() and not p.is_dir():
        return [f"root {p} is a file, --root; expected a folder (or a path where one can be created)"]
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        return [f"root {p} cannot be created: {q} is a file, --root; expected a path under a writable folder"]
    if not os.access(q, os.W_OK | os.X_OK):
        what = "is not writable" if q == p else f"cannot be created: {q} is not writable"
        return [f"root {p} {what}, --root; expected a writable folder"]
    return []


def check(spec: SweepSpec, *, root: str | None = None, tracking_uri: str | None = None, address: str | None = None,
          dashboard: str | None = None, local_run: bool = True, local_ray: bool = False, timeout: float = 3.0) -> Preflight:
    """Returns what preflight found for `spec`; nothing is written.

    root / tracking_uri / address / dashboard: checked when given (tracking_uri None with a root:
    the root's SQLite store). local_run: the sweep computes on this machine (devices and hub
    access are then this machine's; with a cluster they are only checked for form). local_ray: the
    sweep runs on a Ray started here, whose CPUs and GPUs are this machine's.
    """
    t0 = time.perf_counter()
    pf = Preflight()
    data = DataReport()
    seen: set[str] = set()
    for _, b in branches(spec):
        for i, task in enumerate(b.tasks):
            if task.model_dump_json() not in seen:
                seen.add(task.model_dump_json())
                check_task(task, i, data)
    pf.errors += data.errors
    pf.values_read, pf.files = data.values_read, data.files
    pf.checked.append("data")
    pf.errors += check_babel(spec)

    offline: list[str | None] = []

    def hub_offline() -> str | None:  # probed once, only if something needs the hub
        if not offline:
            offline.append(hub_offline_reason(timeout))
        return offline[0]

    for at, source in dict.fromkeys(data.hub_sources):
        repo = source.replace("{lang}", "*")
        why = hub_offline()
        if why is not None:
            cached = _dataset_cached(repo)
            if not cached and local_run:
                pf.errors.append(f"hub dataset {source} is not in the local cache and the hub is unreachable ({why}), {at}; "
                                 "expected a cached copy or a local folder")
            elif not cached:
                pf.warnings.append(f"hub dataset {source}, {at}: not checked (hub unreachable from here: {why}); where the "
                                   "sweep runs, the hub must answer or the cache hold it")
            else:
                pf.warnings.append(f"hub dataset {source}, {at}: hub unreachable ({why}); found in the local cache, columns not checked")
        else:
            pf.warnings.append(f"hub dataset {source}, {at}: columns and sizes are checked when it loads, not before")

    for model in dict.fromkeys(b.model.name for _, b in branches(spec)):
        errs, warns, how = check_model(model, hub_offline, local_run)
        pf.errors += errs
        pf.warnings += warns
        pf.checked.append(how)

    for device in dict.fromkeys(b.training.device for _, b in branches(spec)):
        pf.errors += check_device(device, "training.device", local_run and address is None)
    if local_ray and not address:
        pf.errors += check_local_ray(spec)
    pf.checked.append("device")
    pf.errors += check_fits(spec)
    pf.checked.append("influence sizes")
    root_errors = check_root(root) if root is not None else []
    if root is not None:
        pf.errors += root_errors
        pf.checked.append("root")
    if tracking_uri is not None or (root is not None and not root_errors):  # a bad root's own store says nothing new
        pf.errors += _check_tracking(root, tracking_uri, timeout)
        pf.checked.append("tracking")
    if address and address not in ("auto", "local"):
        from ..orchestration.tune import ClusterUnreachable, check_address

        try:
            check_address(address, timeout)
        except ClusterUnreachable as e:
            pf.errors.append(f"{e}, --address; expected a running Ray head (ray://HOST:10001 or HOST:6379)")
        pf.checked.append("Ray address")
    if dashboard:
        from ..orchestration.jobs import check_dashboard
        from ..orchestration.tune import ClusterUnreachable

        try:
            check_dashboard(dashboard, timeout)
        except ClusterUnreachable as e:
            pf.errors.append(f"{e}, --address; expected a Ray dashboard URL such as http://HEAD:8265")
        pf.checked.append("Ray dashboard")
    pf.seconds = time.perf_counter() - t0
    return pf


def _check_tracking(root: str | None, tracking_uri: str | None, timeout: float) -> list[str]:
    from ..orchestration.tracking_store import TrackingUnreachable, check_tracking_uri, default_tracking_uri

    try:
        uri = tracking_uri or default_tracking_uri(root)
        check_tracking_uri(uri, timeout=timeout)
    except TrackingUnreachable as e:
        return [f"{e}, --tracking-uri; expected a reachable MLflow server or a writable store"]
    except ValueError as e:
        return [f"{e}, --tracking-uri"]
    return []
