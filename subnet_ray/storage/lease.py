"""Leases: one writer per stage output, across processes, invocations and (on a shared root) hosts.

A lease is the file `<store>/_leases/<key>.lease`, taken before `_partial/<key>` is touched and
released after the key is published (or the work failed). It records its holder (a random id),
host, pid, start time and a heartbeat, so a waiting invocation can say who holds what.

Local and shared-POSIX roots: the lease is an exclusive `flock` on that file. The kernel (or,
on NFSv4, the server's lock lease) drops the lock when its holder dies, however it dies
(SIGKILL, OOM, power loss of an NFS client after the server's lease time), so a dead holder's
lease is broken by nobody and can never be broken while its holder lives. A lock file is
never deleted (deleting it would let two processes lock two different inodes of one name).

fsspec roots (S3, GCS, ...): object stores have no locks. The lease object is created with a
conditional write where the file system offers one (`pipe_file(mode="create")`: S3
If-None-Match, GCS ifGenerationMatch=0, local and memory file systems), so exactly one of
two racing creators wins. The holder rewrites its heartbeat every HEARTBEAT s; a lease whose
heartbeat is older than STALE s is taken as its holder's death and broken (deleted, then
re-created conditionally). A holder paused for longer than STALE (a frozen VM) can lose its
lease while it still writes: the store's publish step then finds the key finished and drops
its copy, so the published output is still one writer's (see Store.commit). Where the file
system refuses conditional creation, creation is check-then-write: two processes racing in
the same few milliseconds can both compute the key (the result is still one writer's
folder, published once).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LEASES = "_leases"
HEARTBEAT = 10.0  # seconds between heartbeats
STALE = 120.0  # a remote lease whose heartbeat is older is its dead holder's
POLL = 0.5  # seconds between tries while waiting for a held lease


def holder_record(holder: str) -> dict:
    """Returns what a lease says about its holder: id, host, pid, start time and heartbeat."""
    now = time.time()
    return {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "since": now, "heartbeat": now}


def describe(record: dict | None) -> str:
    """Returns a short account of a lease's holder, e.g. 'pid 123 on node1 for 42 s'."""
    if not record:
        return "another process"
    return f"pid {record.get('pid')} on {record.get('host')} for {time.time() - float(record.get('since', time.time())):.0f} s"


class _LocalLease:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.holder = uuid.uuid4().hex

    def try_take(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.fd = fd
        self.write(holder_record(self.holder))
        return True

    def write(self, record: dict) -> None:
        data = json.dumps(record).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def beat(self) -> None:
        record = self.read() or holder_record(self.holder)
        self.write(record | {"heartbeat": time.time()})

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # the file stays (see the module docstring); its holder is gone
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _RemoteLease:
    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.holder = uuid.uuid4().hex

    def _create(self, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):  # no conditional writes: check, then write
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
            return True

    def try_take(self) -> bool:
        if self._create(json.dumps(holder_record(self.holder)).encode()):
            return self.read_holder() == self.holder
        record = self.read()
        if record is not None and time.time() - float(record.get("heartbeat", 0)) < STALE:
            return False
        try:  # dead holder: break its lease, then race for a new one like everybody else
            self.fs.rm(self.path)
        except FileNotFoundError:
            pass
        return self._create(json.dumps(holder_record(self.holder)).encode()) and self.read_holder() == self.holder

    def read(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):
            return None

    def read_holder(self) -> str | None:
        return (self.read() or {}).get("holder")

    def beat(self) -> None:
        record = self.read()
        if record is not None and record.get("holder") == self.holder:
            self.fs.pipe_file(self.path, json.dumps(record | {"heartbeat": time.time()}).encode())

    def release(self) -> None:
        if self.read_holder() == self.holder:
            self.fs.rm(self.path)


@contextmanager
def lease(store, key: str, on_wait: Callable[[str], None] | None = None, timeout: float | None = None) -> Iterator[None]:
    """Yields once this process holds the lease of `key` in `store`; waits while a live holder has it.

    on_wait(message) is called once when the lease is found held (the message names the holder);
    raises TimeoutError after `timeout` s of waiting (None: wait as long as the holder lives).
    """
    if store.remote:
        impl = _RemoteLease(store.fs, f"{store.root.rstrip('/')}/{LEASES}/{key}.lease")
    else:
        impl = _LocalLease(store.inside(LEASES, f"{key}.lease"))
    t0, told = time.monotonic(), False
    while not impl.try_take():
        if not told and on_wait is not None:
            on_wait(f"stage output {key} is being computed by {describe(impl.read())}: waiting for it")
            told = True
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise TimeoutError(f"stage output {key}: lease still held by {describe(impl.read())} after {timeout:.0f} s")
        time.sleep(POLL)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT):
            try:
                impl.beat()
            except Exception:  # noqa: BLE001 - a missed heartbeat only ages the lease
                pass

    beat = threading.Thread(target=heartbeat, name=f"lease-{key}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        impl.release()


def held(store, key: str) -> str | None:
    """Returns who holds the lease of `key` right now (e.g. 'pid 123 on node1 for 42 s'), None if nobody does."""
    if store.remote:
        impl = _RemoteLease(store.fs, f"{store.root.rstrip('/')}/{LEASES}/{key}.lease")
        record = impl.read()
        fresh = record is not None and time.time() - float(record.get("heartbeat", 0)) < STALE
        return describe(record) if fresh else None
    path = store.inside(LEASES, f"{key}.lease")
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return describe(_LocalLease(path).read())
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Yields while this process holds an exclusive flock on the local file `path` (waits for it)."""
    impl = _LocalLease(Path(path))
    while not impl.try_take():
        time.sleep(POLL)
    try:
        yield
    finally:
        impl.release()
