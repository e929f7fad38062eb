"""Which influence engine computed an influence output, and whether that output may be used.

Each influence output folder holds ENGINE, {"engine": name, "version": n}. An engine's version goes
up with every fix that changes its results; outputs of a version below TRUSTED_FROM are stale:
`run` moves them aside and recomputes them, `status` lists them. Kept free of torch, so `status` stays quick.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..sweep.graph import Node, Stage
from ..storage.store import Store

ENGINE = "engine.json"
ENGINE_VERSION = {"single-process": 1, "ray-data": 1}  # an engine's version goes up with every fix that changes its results
# Outputs of an engine version below this are stale: `run` moves them aside and recomputes them, `status` says so.
# Outputs without a record predate it (issue 33 reported Ray Data tables unlike the single-process ones at the
# paper's pair count; not reproduced here, but those outputs cannot be told apart by engine): stale too.
TRUSTED_FROM = {"single-process": 1, "ray-data": 1}


def write_engine(out: Path, name: str) -> None:
    """Records in the influence output folder `out` which engine (a name in ENGINE_VERSION) computed it, at its present version."""
    (out / ENGINE).write_text(json.dumps({"engine": name, "version": ENGINE_VERSION[name]}, sort_keys=True))


def stale(store: Store, node: Node) -> str | None:
    """Returns why the finished output of `node` must not be used (None if it may): an influence output computed by an
    engine version below TRUSTED_FROM, or one without an engine record (it predates the record, so the Ray Data path
    before its fix may have computed it)."""
    if node.stage != Stage.INFLUENCE:
        return None
    text = store.read_text(node.key, ENGINE)
    if text is None:
        return (f"{ENGINE}: missing (computed before influence outputs recorded their engine; the Ray Data engine then "
                f"disagreed with the single-process one at the paper's pair count)")
    try:
        record = json.loads(text)
        name, version = record["engine"], int(record["version"])
    except (ValueError, KeyError, TypeError) as e:
        return f"{ENGINE}: unreadable ({e})"
    if name not in TRUSTED_FROM:
        return f"{ENGINE}: unknown engine {name!r} (known: {', '.join(TRUSTED_FROM)})"
    if version < TRUSTED_FROM[name]:
        return f"{ENGINE}: computed by {name} engine version {version}, older than the trusted {TRUSTED_FROM[name]}"
    return None
