import os
from pathlib import Path

import pytest

from subnet_ray.storage.store import MANIFEST, SUCCESS, Store


def test_key_depends_on_config_and_inputs_only():
    a = Store.key("train", {"lr": 1e-5, "epochs": 2}, ["data/x"])
    assert a == Store.key("train", {"epochs": 2, "lr": 1e-5}, ["data/x"])  # order of fields does not matter
    assert a != Store.key("train", {"lr": 2e-5, "epochs": 2}, ["data/x"])
    assert a != Store.key("train", {"lr": 1e-5, "epochs": 2}, ["data/y"])
    assert a.startswith("train/")


def test_failed_stage_exposes_nothing_and_resumes_from_partial(tmp_path):
    store = Store(tmp_path)
    key = Store.key("stage", {"n": 1})
    with pytest.raises(RuntimeError):
        with store.writing(key) as d:
            (d / "half.txt").write_text("first part")
            raise RuntimeError("crash mid-write")
    assert not store.done(key)
    assert store.keys() == []
    with pytest.raises(KeyError, match="not in the store"):
        store.path(key)
    # the scratch folder survives, so the retried stage can pick up where it stopped
    assert (store.partial(key) / "half.txt").read_text() == "first part"
    with store.writing(key) as d:
        (d / "rest.txt").write_text("second part")
    assert store.done(key) and store.keys() == [key]
    assert sorted(p.name for p in store.path(key).iterdir()) == [SUCCESS, MANIFEST, "half.txt", "rest.txt"]


def test_finished_key_is_never_recomputed(tmp_path):
    store = Store(tmp_path)
    key = Store.key("stage", {"n": 2})
    calls = []

    def compute(d: Path):
        calls.append(1)
        (d / "out").write_text("x")

    p1 = store.get_or_compute(key, compute)
    p2 = Store(tmp_path).get_or_compute(key, compute)
    assert p1 == p2 and calls == [1]


def test_fsspec_root_publishes_with_marker_last(tmp_path):
    store = Store(f"memory://{tmp_path.name}/root", cache=tmp_path / "cache")
    key = Store.key("stage", {"n": 3})
    with store.writing(key) as d:
        (d / "a.txt").write_text("hello")
        assert not store.done(key)
    assert store.done(key)
    fresh = Store(f"memory://{tmp_path.name}/root", cache=tmp_path / "cache2")
    assert (fresh.path(key) / "a.txt").read_text() == "hello"
    assert fresh.keys("stage") == [key]
    assert not any(".tmp-" in p for p in fresh.fs.find(fresh.root))


def test_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("runs/store")
    assert store.uri == str(tmp_path / "runs" / "store") and Path(store.uri).is_absolute()
    monkeypatch.chdir("/")  # as in a Ray Tune trial, which runs in its own folder
    key = Store.key("s", {})
    with store.writing(key) as d:
        (d / "x").write_text("1")
    assert Store(str(tmp_path / "runs" / "store")).done(key)


def test_ledger_is_shared_by_every_node_of_a_remote_store(tmp_path):
    # two "nodes": the same fsspec root, each with its own local cache folder
    uri = f"memory://{tmp_path.name}/ledger"
    a, b = Store(uri, cache=tmp_path / "node-a"), Store(uri, cache=tmp_path / "node-b")
    a.record({"key": "finetune/1", "pid": 1})
    b.record({"key": "influence/2", "pid": 2})
    a.record({"key": "finetune/3", "pid": 1})
    want = ["finetune/1", "influence/2", "finetune/3"]  # oldest first, whoever wrote it
    assert [e["key"] for e in a.ledger()] == [e["key"] for e in b.ledger()] == want
    assert not list((tmp_path / "node-a").rglob("*.json"))  # nothing only one node can see
    assert a.keys() == []  # ledger entries are not stage outputs


def test_local_ledger_reads_entries_of_the_old_single_file_first(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "_ledger.jsonl").write_text('{"key": "old/1"}\n{"key": "old/2"}\n')
    store.record({"key": "new/3"})
    assert [e["key"] for e in Store(tmp_path).ledger()] == ["old/1", "old/2", "new/3"]
    assert not list((tmp_path / "_ledger").glob("*.tmp"))


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_while_publishing_is_delivered_after_the_ledger_entry(tmp_path, monkeypatch, sig):
    """A Ctrl-C (or SIGTERM) between publishing an output and recording it would leave a finished key
    that no rerun records; _publish holds it back until both are done, then delivers it."""
    import signal
    from types import SimpleNamespace

    from subnet_ray.orchestration.interrupts import Interrupted, handling
    from subnet_ray.stages import _publish

    store = Store(tmp_path)
    key = "finetune/" + "ab" * 10
    node = SimpleNamespace(key=key, stage="finetune", trial="t/full/seed1", params=SimpleNamespace(variant=None))
    (store.partial(key) / "x.txt").write_text("1")
    commit = store.commit
    monkeypatch.setattr(store, "commit", lambda k: (commit(k), signal.raise_signal(getattr(signal, sig)))[0])
    with handling():  # as a sweep driver has it: the signal raises Interrupted
        before = signal.getsignal(getattr(signal, sig))
        with pytest.raises(Interrupted) as stopped:
            _publish(store, node, 1.5)
        assert signal.getsignal(getattr(signal, sig)) is before
    assert stopped.value.signum == getattr(signal, sig)
    assert store.done(key)
    assert [(e["key"], e["seconds"]) for e in store.ledger()] == [(key, 1.5)]


def test_an_error_native_code_raises_in_place_of_the_interrupt_is_still_an_interrupt():
    """safetensors' loader swallowed the Interrupted that SIGTERM raised inside it and raised
    ValueError("could not determine the shape ..."): the sweep must still stop as interrupted (143)."""
    import signal

    from subnet_ray.orchestration.interrupts import Interrupted, handling, signalled

    def native_call():
        try:
            signal.raise_signal(signal.SIGTERM)
        except Interrupted:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None

    with pytest.raises(Interrupted) as stopped:
        with handling():
            native_call()
    assert stopped.value.exit_code == 143 and isinstance(stopped.value.__cause__, ValueError)
    assert signalled() is None  # the invocation is over
    with pytest.raises(ValueError):  # without a signal an error stays what it is
        with handling():
            raise ValueError("a real bug")
