"""Manifests of published stage outputs: every file's name, size and SHA-256, and the checks against them.

A stage output is trusted only as far as its manifest vouches for it. `write_manifest` hashes
and flushes (fsync) every file of a finished folder, then writes `_manifest.json` and flushes
it; the store writes its completion marker only after that, so a marker always stands on a
manifest of bytes that reached the disk. `check` compares a folder with its manifest: sizes
always (a stat per file), hashes of small files always (masks, JSON, tables: microseconds),
hashes of every file when asked (checkpoints: the cost of reading them once).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
SMALL = 4 << 20  # files up to this size are hashed by every check: ~2 ms each
_CHUNK = 1 << 20
HASHES = ("none", "small", "all")


class DamagedOutput(RuntimeError):
    """A published stage output that does not match its manifest; the message names the key and the file."""

    def __init__(self, key: str, problems: list[str]):
        self.key, self.problems = key, problems
        super().__init__(f"stage output {key} is damaged: {'; '.join(problems)}; "
                         "`subnet-ray run` moves it aside and recomputes it")


def sha256(path: Path, fsync: bool = False) -> str:
    """Returns the hex SHA-256 of the file at `path` (flushing it to disk first when `fsync`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flushes a folder's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).parts[0] not in (MANIFEST, SUCCESS))


def write_manifest(folder: Path, fsync: bool = True) -> dict:
    """Returns the manifest written into `folder`: {'files': {relative name: {'size', 'sha256'}}}.

    With `fsync` (local roots), every file and folder is flushed first, then the manifest itself.
    """
    folder = Path(folder)
    files = {}
    for rel in _files(folder):
        p = folder / rel
        files[rel] = {"size": p.stat().st_size, "sha256": sha256(p, fsync=fsync)}
    manifest = {"version": 1, "files": files}
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True))
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    if fsync:
        for d in sorted({(folder / r).parent for r in files} | {folder}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """Returns the folder's manifest, None for an output published before manifests existed (legacy).

    Raises ValueError naming the file if the manifest itself is unreadable.
    """
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
        files = m["files"]
        assert all(isinstance(v["size"], int) and isinstance(v["sha256"], str) for v in files.values())
        return m
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError) as e:
        raise ValueError(f"{path}: not a valid manifest ({e!r})") from None


def check(folder: Path, hashes: str = "small", only: list[str] | None = None) -> list[str] | None:
    """Returns the problems of `folder` against its manifest ('file: what is wrong'), [] if none,
    None if it has no manifest (a legacy output: nothing to check against).

    hashes: 'none' (sizes only), 'small' (also the SHA-256 of files up to SMALL bytes), 'all'.
    only: check these files only (the ones a reader is about to load); extra files are not looked for.
    """
    if hashes not in HASHES:
        raise ValueError(f"hashes must be one of {HASHES}, got {hashes!r}")
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ValueError as e:
        return [f"{MANIFEST}: {e}"]
    if manifest is None:
        return None
    listed = manifest["files"]
    problems = []
    names = sorted(listed) if only is None else only
    for rel in names:
        want = listed.get(rel)
        p = folder / rel
        if want is None:
            problems.append(f"{rel}: not in the manifest")
            continue
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != want["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {want['size']}")
        elif (hashes == "all" or (hashes == "small" and size <= SMALL)) and sha256(p) != want["sha256"]:
            problems.append(f"{rel}: content differs from the manifest (SHA-256)")
    if only is None:
        problems += [f"{rel}: not in the manifest" for rel in _files(folder) if rel not in listed]
    return problems
