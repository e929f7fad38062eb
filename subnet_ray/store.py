"""The artifact store: content-addressed stage outputs, written atomically.

A stage's key is a hash of its own config and its inputs' keys, so a rerun finds what is
already there and computes only what is missing. Work in progress lives in a stable
`_partial/<key>` folder (so an interrupted stage can resume) and is published by one
rename; a key is finished exactly when its folder exists with its `_SUCCESS` marker.
The root is a local folder, or any fsspec URI (s3://, gs://, file://) for a cluster:
then partial work is local and published by upload to a temporary name, a move, and the
marker written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

SUCCESS = "_SUCCESS"
LEDGER = "_ledger"  # one JSON file per computation, in the store itself (shared by every node)
OLD_LEDGER = "_ledger.jsonl"  # stores written before the ledger moved into the store: still read


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class Store:
    """A folder of finished stage outputs, addressed by key."""

    def __init__(self, root: str | os.PathLike, cache: str | os.PathLike | None = None):
        root = str(root)
        self.remote = "://" in root and not root.startswith("file://")
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(root)
            self.local = Path(cache or Path.home() / ".cache" / "subnet-ray" / hashlib.sha1(root.encode()).hexdigest()[:12])
        else:
            self.fs = None
            # absolute: Ray Tune runs trials in their own working folders
            self.root = str(Path(root.removeprefix("file://")).resolve())
            self.local = Path(self.root)
            root = self.root
        self.local.mkdir(parents=True, exist_ok=True)
        self.uri = root

    @staticmethod
    def key(stage: str, config: Any, inputs: Sequence[str] = ()) -> str:
        """Returns `<stage>/<hash>` from the stage name, its config and its inputs' keys."""
        digest = hashlib.sha256(_canonical({"stage": stage, "config": config, "inputs": list(inputs)}).encode()).hexdigest()
        return f"{stage}/{digest[:20]}"

    def _remote(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def done(self, key: str) -> bool:
        """Returns whether `key` is finished (published with its marker)."""
        if self.remote:
            return self.fs.exists(f"{self._remote(key)}/{SUCCESS}")
        return (self.local / key / SUCCESS).exists()

    def path(self, key: str) -> Path:
        """Returns a local folder holding the finished `key` (downloaded once if the root is remote)."""
        if not self.done(key):
            raise KeyError(f"stage output {key} is not in the store {self.uri}")
        local = self.local / key
        if self.remote and not (local / SUCCESS).exists():
            tmp = self.local / "_download" / uuid.uuid4().hex
            self.fs.get(self._remote(key) + "/", str(tmp), recursive=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        return local

    def partial(self, key: str) -> Path:
        """Returns the stable local scratch folder for unfinished work on `key` (kept across crashes)."""
        p = self.local / "_partial" / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, key: str) -> Path:
        """Publishes `partial(key)` as the finished `key` in one atomic step; returns its local folder."""
        src = self.local / "_partial" / key
        (src / SUCCESS).write_text("")
        if self.remote:
            tmp = f"{self._remote(key)}.tmp-{uuid.uuid4().hex}"
            self.fs.put(str(src) + "/", tmp, recursive=True)
            if self.fs.exists(self._remote(key)):
                self.fs.rm(tmp, recursive=True)  # someone else finished it first
            else:
                self.fs.mv(tmp, self._remote(key), recursive=True)
        dst = self.local / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dst)
        except OSError:
            if not (dst / SUCCESS).exists():
                raise
            shutil.rmtree(src)  # a concurrent writer published the same key first; same content by construction
        return dst

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """Yields the scratch folder for `key`; publishes it if the block succeeds, keeps it for resume if not."""
        yield self.partial(key)
        self.commit(key)

    def get_or_compute(self, key: str, compute: Callable[[Path], None]) -> Path:
        """Returns the folder of `key`, running `compute(scratch_folder)` first if it is not finished."""
        if not self.done(key):
            with self.writing(key) as scratch:
                compute(scratch)
        return self.path(key)

    def record(self, entry: dict) -> None:
        """Returns None; adds `entry` (a computation: key, stage, time, ...) to the store's ledger.

        One small file per entry, written whole under a unique name, so any number of processes
        on any nodes can record at once without locks, on a local folder or an fsspec root.
        """
        name = f"{LEDGER}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        text = json.dumps(entry, sort_keys=True)
        if self.remote:
            self.fs.pipe_file(f"{self.root.rstrip('/')}/{name}", text.encode())
            return
        path = self.local / name
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader never sees half an entry

    def ledger(self) -> list[dict]:
        """Returns every recorded computation, oldest first (the order of their file names)."""
        old = self.local / OLD_LEDGER
        entries = [json.loads(line) for line in old.read_text().splitlines()] if not self.remote and old.exists() else []
        if self.remote:
            base = f"{self.root.rstrip('/')}/{LEDGER}"
            names = sorted(self.fs.glob(f"{base}/*.json"))
            entries += [json.loads(self.fs.cat_file(n)) for n in names]
        else:
            entries += [json.loads(p.read_text()) for p in sorted((self.local / LEDGER).glob("*.json"))]
        return entries

    def keys(self, stage: str | None = None) -> list[str]:
        """Returns the finished keys, optionally of one stage."""
        if self.remote:
            pattern = f"{self.root.rstrip('/')}/{stage or '*'}/*/{SUCCESS}"
            return sorted(p[len(self.root.rstrip("/")) + 1 : -len(SUCCESS) - 1] for p in self.fs.glob(pattern))
        base = self.local
        found = base.glob(f"{stage or '*'}/*/{SUCCESS}")
        return sorted(str(p.parent.relative_to(base)) for p in found if not str(p).startswith(str(base / "_partial")))


def store_for(root: str | os.PathLike) -> Store:
    """Returns the artifact store under a sweep root (shared by every sweep under that root)."""
    root = str(root)
    return Store(f"{root.rstrip('/')}/store" if "://" in root else Path(root) / "store")
