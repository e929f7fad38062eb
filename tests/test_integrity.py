"""Nothing trusted blindly: safe path names, manifests of published outputs, the ledger, leases."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from subnet_ray.cli import main
from subnet_ray.storage.lease import held, lease
from subnet_ray.storage.manifest import MANIFEST, check
from subnet_ray.storage.store import SUCCESS, DamagedOutput, Store
from tiny import smoke_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old,new,field", [
    ("languages: [xa, xb, ya]", "languages: [xa, ../x, ya]", "language code '../x'"),
    ("name: smoke", "name: ..", "sweep name '..'"),
    ("families: [[xa, xb], [ya]]", "families: [[xa, xb/../..], [ya]]", "babel.families language code 'xb/../..'"),
    ("random_seeds: [1]", "random_seeds: [1]\ngrid: {model.tiny.layers: [2], training.device: ['../cpu']}", "grid.training.device value '../cpu'"),
])
def test_validate_refuses_names_that_would_leave_a_folder(tmp_path, capsys, old, new, field):
    p = tmp_path / "bad.yaml"
    text = smoke_sweep("safe") if old != "name: smoke" else smoke_sweep("smoke")
    p.write_text(text.replace(old, new))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and field in err and "not a safe name" in err


def test_store_paths_stay_inside_the_store(tmp_path):
    store = Store(tmp_path / "store")
    for bad in ("../x", "finetune/../../x", "/etc/passwd", "finetune/0123"):
        with pytest.raises(ValueError, match="is not <stage>/<20 hex digits>"):
            store.partial(bad)
        with pytest.raises(ValueError):
            store.done(bad)
    with pytest.raises(ValueError, match="outside the store"):
        store.inside("_leases", "../../escape.lease")
    assert store.inside("_leases", "finetune", "x.lease").is_relative_to(store.local)


def _publish(store: Store, key: str, files: dict[str, bytes]) -> Path:
    with store.writing(key) as d:
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
    return store.path(key)


def test_manifest_names_every_kind_of_damage(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("finetune", {"n": 1})
    big = os.urandom(5 << 20)  # over manifest.SMALL: only `hashes="all"` reads it
    folder = _publish(store, key, {"epoch_1/model.safetensors": big, "xa/mask.npy": b"\x01" * 64, "history.json": b"[]"})
    manifest = json.loads((folder / MANIFEST).read_text())["files"]
    assert manifest["epoch_1/model.safetensors"]["size"] == len(big)
    assert store.check(key) == [] and store.check(key, "all") == []

    # same size, other bytes: the big file is caught by hashes="all" only, the small one always
    flipped = bytearray(big)
    flipped[123] ^= 1
    (folder / "epoch_1/model.safetensors").write_bytes(bytes(flipped))
    (folder / "xa/mask.npy").write_bytes(b"\x00" + b"\x01" * 63)
    assert store.check(key, "small") == ["xa/mask.npy: content differs from the manifest (SHA-256)"]
    assert store.check(key, "all") == ["epoch_1/model.safetensors: content differs from the manifest (SHA-256)",
                                       "xa/mask.npy: content differs from the manifest (SHA-256)"]
    (folder / "epoch_1/model.safetensors").write_bytes(big[:1000])  # truncated
    (folder / "history.json").unlink()
    (folder / "epoch_3").mkdir()
    (folder / "epoch_3/model.safetensors").write_bytes(b"stray")
    assert store.check(key, "none") == [f"epoch_1/model.safetensors: 1000 bytes, the manifest says {len(big)}",
                                        "history.json: missing", "epoch_3/model.safetensors: not in the manifest"]
    with pytest.raises(DamagedOutput, match=rf"{key} is damaged: epoch_1/model.safetensors: 1000 bytes"):
        Store(tmp_path / "store").path(key)
    where = store.set_aside(key, store.check(key))
    assert not store.done(key) and store.keys() == []
    assert "history.json: missing" in (Path(where) / "_damage.txt").read_text()
    assert Path(where).is_relative_to(store.local / "_damaged")


def test_legacy_output_without_manifest_is_used_unchecked(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("subnetworks", {"n": 1})
    (store.local / key).mkdir(parents=True)
    (store.local / key / "a.txt").write_text("old")
    (store.local / key / SUCCESS).write_text("")
    assert store.done(key) and store.check(key, "all") is None and check(store.local / key) is None
    assert (store.path(key, hashes="all") / "a.txt").read_text() == "old"


def test_a_bad_manifest_is_damage_not_a_crash(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("subnetworks", {"n": 2})
    folder = _publish(store, key, {"a.txt": b"x"})
    (folder / MANIFEST).write_text("{not json")
    problems = store.check(key)
    assert len(problems) == 1 and problems[0].startswith(f"{MANIFEST}: ") and "not a valid manifest" in problems[0]


def test_malformed_ledger_entry_is_skipped_with_a_warning_naming_it(tmp_path):
    store = Store(tmp_path / "store")
    store.record({"key": "finetune/" + "0" * 20, "stage": "finetune"})
    bad = store.local / "_ledger" / "00000000000000000001-bad.json"
    bad.write_text('{"key": "finetune/')  # cut short, as by a full disk
    store.record({"key": "influence/" + "1" * 20, "stage": "influence"})
    with pytest.warns(UserWarning, match=rf"ledger entry {bad} is unreadable"):
        entries = store.ledger()
    assert [e["stage"] for e in entries] == ["finetune", "influence"]


HOLDER = textwrap.dedent("""
    import sys, time
    from subnet_ray.storage.store import Store
    from subnet_ray.storage.lease import lease
    with lease(Store(sys.argv[1]), sys.argv[2]):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
    print("released", flush=True)
""")


def _holder(root, key, seconds):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), key, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lease_waits_for_a_live_holder_and_says_so(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("finetune", {"n": 1})
    proc = _holder(store.local, key, 2.0)
    assert f"pid {proc.pid} on " in held(store, key)
    said, t0 = [], time.monotonic()
    with lease(store, key, on_wait=said.append):
        waited = time.monotonic() - t0
        assert held(Store(store.local), key) is not None  # ours now
    assert proc.wait(10) == 0 and waited > 1.0
    assert len(said) == 1 and f"{key} is being computed by pid {proc.pid}" in said[0]
    assert held(store, key) is None


def test_lease_of_a_killed_holder_is_free_at_once(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("finetune", {"n": 2})
    proc = _holder(store.local, key, 600)
    with pytest.raises(TimeoutError, match=f"held by pid {proc.pid}"):
        with lease(store, key, timeout=0.3):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    with lease(store, key, timeout=5):
        assert time.monotonic() - t0 < 1.0


def test_remote_lease_is_taken_once_and_broken_when_stale(tmp_path, monkeypatch):
    import subnet_ray.storage.lease as lease_mod

    store = Store("memory://h15-lease-test/store")
    key = Store.key("finetune", {"n": 3})
    first, second = lease_mod._RemoteLease(store.fs, f"{store.root}/_leases/{key}.lease"), None
    assert first.try_take()
    second = lease_mod._RemoteLease(store.fs, first.path)
    assert not second.try_take()  # conditional create: the object exists
    assert held(store, key) is not None
    monkeypatch.setattr(lease_mod, "STALE", 0.0)  # the holder's heartbeat is now too old: it is dead
    assert second.try_take() and second.read_holder() == second.holder
    first.release()  # the broken holder's release must not free the new holder's lease
    assert second.read_holder() == second.holder
    second.release()
    assert not store.fs.exists(first.path)


def test_remote_store_outputs_are_checked_and_set_aside(tmp_path):
    uri = f"memory://{tmp_path.name}/root"
    store = Store(uri, cache=tmp_path / "node-a")
    key = Store.key("influence", {"n": 1})
    _publish(store, key, {"topk.parquet": b"t" * 100, "predictions.parquet": b"p" * 10})
    assert store.check(key) == [] and store.fs.exists(f"{store.root}/{key}/{SUCCESS}") and store.fs.exists(f"{store.root}/{key}/{MANIFEST}")
    store.fs.pipe_file(f"{store.root}/{key}/topk.parquet", b"t" * 99)  # damaged in the bucket
    assert store.check(key) == ["topk.parquet: 99 bytes, the manifest says 100"]
    other = Store(uri, cache=tmp_path / "node-b")  # a node that downloads it checks what it got
    with pytest.raises(DamagedOutput, match="topk.parquet: 99 bytes"):
        other.path(key)
    store.set_aside(key, store.check(key))
    assert not store.done(key) and not other.done(key) and store.keys() == []


def test_a_folder_that_lost_its_marker_is_recomputed_and_published(tmp_path):
    store = Store(tmp_path / "store")
    key = Store.key("random_masks", {"n": 1})
    folder = _publish(store, key, {"a.txt": b"old"})
    (folder / SUCCESS).unlink()  # a deleted marker: the output is missing, its folder is still there
    assert not store.done(key)
    _publish(store, key, {"a.txt": b"new"})
    assert store.done(key) and (store.path(key, hashes="all") / "a.txt").read_bytes() == b"new"
    assert [p.name for p in (store.local / "_damaged" / "random_masks").iterdir()][0].startswith(key.split("/")[1])
