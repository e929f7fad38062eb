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
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

SUCCESS = "_SUCCESS"


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

    def keys(self, stage: str | None = None) -> list[str]:
        """Returns the finished keys, optionally of one stage."""
        if self.remote:
            pattern = f"{self.root.rstrip('/')}/{stage or '*'}/*/{SUCCESS}"
            return sorted(p[len(self.root.rstrip("/")) + 1 : -len(SUCCESS) - 1] for p in self.fs.glob(pattern))
        base = self.local
        found = base.glob(f"{stage or '*'}/*/{SUCCESS}")
        return sorted(str(p.parent.relative_to(base)) for p in found if not str(p).startswith(str(base / "_partial")))
