"""The artifact store: content-addressed stage outputs, written atomically.

A stage's key is a hash of its own config and its inputs' keys, so a rerun finds what is
already there and computes only what is missing. Work in progress lives in a stable
`_partial/<key>` folder (so an interrupted stage can resume) and is published by one
rename; a key is finished exactly when its folder exists with its `_SUCCESS` marker, and
the marker is written only after the folder's manifest (every file's size and SHA-256,
manifest.py) and, on local roots, after every file and folder was flushed to disk.
Readers check what they load against the manifest (`path(key, hashes=...)`), so a damaged
output is named (key and file), moved aside (`set_aside`) and recomputed, never read.
Every path is resolved and checked to lie inside the store, whatever a key says.
One process at a time computes a key: `lease(key)` (lease.py) is taken before its partial
folder is touched.
The root is a local folder, or any fsspec URI (s3://, gs://, file://) for a cluster:
then partial work is local and published by upload to a temporary name, a move, and the
marker written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import manifest as mf
from .manifest import MANIFEST, SUCCESS, DamagedOutput  # noqa: F401 - re-exported for callers

DAMAGED = "_damaged"  # damaged outputs are moved here (never deleted: a user may want to look)
_KEY = re.compile(r"^[a-z_]+/[0-9a-f]{20}$")
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
        self._verified: dict[str, tuple[int | None, int]] = {}  # key -> (manifest mtime, hash level checked)

    @staticmethod
    def key(stage: str, config: Any, inputs: Sequence[str] = ()) -> str:
        """Returns `<stage>/<hash>` from the stage name, its config and its inputs' keys."""
        digest = hashlib.sha256(_canonical({"stage": stage, "config": config, "inputs": list(inputs)}).encode()).hexdigest()
        return f"{stage}/{digest[:20]}"

    def _remote(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{_checked_key(key)}"

    def inside(self, *parts: str) -> Path:
        """Returns the local path `parts` name under the store, resolved; raises ValueError if it lies outside."""
        base = self.local.resolve()
        p = base.joinpath(*parts).resolve()
        if p != base and base not in p.parents:
            raise ValueError(f"path {'/'.join(parts)!r} lies outside the store {self.uri}")
        return p

    def done(self, key: str) -> bool:
        """Returns whether `key` is finished (published with its marker); `check` says whether it is intact."""
        if self.remote:
            return self.fs.exists(f"{self._remote(key)}/{SUCCESS}")
        return (self.inside(_checked_key(key)) / SUCCESS).exists()

    def check(self, key: str, hashes: str = "small") -> list[str] | None:
        """Returns the problems of the finished `key` against its manifest ([] if intact), None if it has
        no manifest (published before manifests: legacy, unchecked). On a remote root: sizes only."""
        if not self.remote:
            return mf.check(self.inside(_checked_key(key)), hashes)
        base = self._remote(key)
        try:
            manifest = json.loads(self.fs.cat_file(f"{base}/{MANIFEST}"))
        except FileNotFoundError:
            return None
        except ValueError as e:
            return [f"{MANIFEST}: not valid JSON ({e})"]
        found = {p[len(base) + 1 :]: info["size"] for p, info in self.fs.find(base, detail=True).items()}
        problems = []
        for rel, want in sorted(manifest["files"].items()):
            if rel not in found:
                problems.append(f"{rel}: missing")
            elif found[rel] != want["size"]:
                problems.append(f"{rel}: {found[rel]} bytes, the manifest says {want['size']}")
        return problems

    def read_text(self, key: str, name: str) -> str | None:
        """Returns the text of file `name` of the finished `key` (None if it has no such file), without downloading the rest."""
        try:
            if self.remote:
                return self.fs.cat_file(f"{self._remote(key)}/{name}").decode()
            return (self.inside(_checked_key(key)) / name).read_text()
        except FileNotFoundError:
            return None

    def path(self, key: str, hashes: str = "none") -> Path:
        """Returns a local folder holding the finished `key` (downloaded once if the root is remote),
        checked against its manifest: sizes, and SHA-256 of the files `hashes` says (none | small | all).

        Raises DamagedOutput naming the key and file if it does not match; each check is done once per process.
        """
        if not self.done(key):
            raise KeyError(f"stage output {key} is not in the store {self.uri}")
        local = self.inside(key)
        if self.remote and not (local / SUCCESS).exists():
            tmp = self.inside("_download", uuid.uuid4().hex)
            self.fs.get(self._remote(key) + "/", str(tmp), recursive=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        self._verify(key, local, hashes)
        return local

    def _verify(self, key: str, local: Path, hashes: str) -> None:
        stamp = (local / MANIFEST).stat().st_mtime_ns if (local / MANIFEST).exists() else None
        level = mf.HASHES.index(hashes)
        seen = self._verified.get(key)
        if seen is not None and seen[0] == stamp and seen[1] >= level:
            return
        problems = mf.check(local, hashes)
        if problems:
            raise DamagedOutput(key, problems)
        self._verified[key] = (stamp, level)

    def set_aside(self, key: str, problems: list[str]) -> str:
        """Returns where the damaged (or stale) `key` was moved (under _damaged/, with a note of its problems), so it is
        missing for every reader and recomputed by the next run."""
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        note = "\n".join(problems) + "\n"
        self._verified.pop(key, None)
        local = self.inside(key)
        if self.remote:
            dst = f"{self.root.rstrip('/')}/{DAMAGED}/{key}.{stamp}"
            self.fs.rm(f"{self._remote(key)}/{SUCCESS}")  # missing at once for every reader, then moved
            self.fs.mv(self._remote(key), dst, recursive=True)
            self.fs.pipe_file(f"{dst}/_damage.txt", note.encode())
            if local.exists():
                shutil.rmtree(local)
            return dst
        dst = self.inside(DAMAGED, f"{key}.{stamp}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(local, dst)
        (dst / "_damage.txt").write_text(note)
        return str(dst)

    def partial(self, key: str) -> Path:
        """Returns the stable local scratch folder for unfinished work on `key` (kept across crashes)."""
        p = self.inside("_partial", _checked_key(key))
        p.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, key: str) -> Path:
        """Publishes `partial(key)` as the finished `key` in one atomic step; returns its local folder.

        Order: manifest (files flushed first on a local root), marker (flushed), rename, parent flushed.
        """
        src = self.inside("_partial", _checked_key(key))
        for stale in (src / SUCCESS, src / MANIFEST):  # left by a crash between the two writes: rewritten below
            stale.unlink(missing_ok=True)
        local_root = not self.remote
        mf.write_manifest(src, fsync=local_root)
        if self.remote:
            tmp = f"{self._remote(key)}.tmp-{uuid.uuid4().hex}"
            self.fs.put(str(src) + "/", tmp, recursive=True)
            if self.fs.exists(f"{self._remote(key)}/{SUCCESS}"):
                self.fs.rm(tmp, recursive=True)  # someone else finished it first
            else:
                self.fs.mv(tmp, self._remote(key), recursive=True)  # an object store moves file by file:
                self.fs.pipe_file(f"{self._remote(key)}/{SUCCESS}", b"")  # the marker goes last
        with open(src / SUCCESS, "w") as f:
            if local_root:
                os.fsync(f.fileno())
        dst = self.inside(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and not (dst / SUCCESS).exists():  # a folder that lost its marker: not a published output
            if self.remote:
                shutil.rmtree(dst)  # only a local copy
            else:
                self.set_aside(key, [f"{SUCCESS}: missing (the folder was not a published output)"])
        try:
            os.rename(src, dst)
        except OSError:
            if not (dst / SUCCESS).exists():
                raise
            shutil.rmtree(src)  # a concurrent writer published the same key first; same content by construction
        if local_root:
            mf.fsync_dir(dst.parent)
            mf.fsync_dir(src.parent)
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
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a reader never sees half an entry

    def ledger(self) -> list[dict]:
        """Returns every recorded computation, oldest first (the order of their file names); an unreadable
        entry is skipped with a warning naming its file."""
        entries = []

        def parse(text: str, where: str) -> None:
            try:
                e = json.loads(text)
                if not isinstance(e, dict) or "key" not in e:
                    raise ValueError("not an object with a 'key'")
                entries.append(e)
            except ValueError as err:
                warnings.warn(f"ledger entry {where} is unreadable ({err}); skipped", stacklevel=3)

        old = self.local / OLD_LEDGER
        if not self.remote and old.exists():
            for i, line in enumerate(old.read_text().splitlines()):
                parse(line, f"{old}:{i + 1}")
        if self.remote:
            base = f"{self.root.rstrip('/')}/{LEDGER}"
            for n in sorted(self.fs.glob(f"{base}/*.json")):
                parse(self.fs.cat_file(n).decode(errors="replace"), n)
        else:
            for p in sorted((self.local / LEDGER).glob("*.json")):
                parse(p.read_text(errors="replace"), str(p))
        return entries

    def keys(self, stage: str | None = None) -> list[str]:
        """Returns the finished keys, optionally of one stage."""
        if self.remote:
            pattern = f"{self.root.rstrip('/')}/{stage or '*'}/*/{SUCCESS}"
            found = [p[len(self.root.rstrip("/")) + 1 : -len(SUCCESS) - 1] for p in self.fs.glob(pattern)]
        else:
            found = [str(p.parent.relative_to(self.local)) for p in self.local.glob(f"{stage or '*'}/*/{SUCCESS}")]
        return sorted(k for k in found if not k.startswith("_"))


def _checked_key(key: str) -> str:
    """Returns `key` if it has the form Store.key gives (`<stage>/<20 hex>`); raises ValueError naming it otherwise."""
    if not _KEY.match(key):
        raise ValueError(f"stage output key {key!r} is not <stage>/<20 hex digits>")
    return key


def store_for(root: str | os.PathLike) -> Store:
    """Returns the artifact store under a sweep root (shared by every sweep under that root)."""
    root = str(root)
    return Store(f"{root.rstrip('/')}/store" if "://" in root else Path(root) / "store")
