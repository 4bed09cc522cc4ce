"""Crash consistency: SIGKILL `arker serve` in the middle of operations, then check.

It runs on both storages (btrfs and directories). Each trial starts one operation in
a thread (a presigned upload, a chunked upload, a fork, a run or a delete), kills the
server with SIGKILL after a random short delay (seeded: ``ARKER_CRASH_SEED``), starts
it again on the same data dir and checks:

* no partial file is visible: each target file is absent or one complete version
  (sync read + sha256);
* every listed VM is usable (a run of ``true``, a write and a read);
* no leaked mounts: the host's mountinfo has no overlay of this server (it mounts in
  a private namespace) and its mount-point directory holds only empty directories;
* no leaked processes: nothing started by the killed server is still running;
* no orphans after start-up GC: every layer directory is referenced by some VM's
  chain, no interrupted fork/flatten leftovers, and the engine holds no VM the
  database does not list.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from arker import Arker, NotFoundError
from arker.local.sandbox.layers import FLATTEN_THRESHOLD
from arker.local.sandbox.volume import btrfs_unavailable
from arker.testing import ArkerServer, start_server

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("ARKER_CRASH_SEED", "20261126"))
OPS = ("presigned", "chunked", "fork", "run", "delete")
ROUNDS = 5  # x 5 operations = 25 trials
MARK = "ARKER_CRASH_MARK"
PRESIGNED_PATH = "/home/user/presigned.bin"
CHUNKED_PATH = "/home/user/chunked.bin"
CHUNK = 1 << 20
_LAYER = re.compile(r"^[0-9a-f]{8}$")


class Crasher:
    """One dedicated server plus what the trials expect to find after a crash."""

    def __init__(self, server: ArkerServer, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.generation = 0
        self.client = self._client()
        self.vm = self.client.vms.fork("arkuntu").vm_id
        # A deep chain, so that the fork trials also flatten (and get killed in it).
        for i in range(FLATTEN_THRESHOLD - 2):
            self.client.runs.create(self.vm, f"echo {i} > /home/user/layer{i % 4}")
            self.client.vms.delete(self.client.vms.fork(self.vm).vm_id)
        # Acceptable sha256 per path (None: absent); narrowed to what is observed.
        self.expected: dict[str, set[str | None]] = {PRESIGNED_PATH: {None}, CHUNKED_PATH: {None}}

    def _client(self) -> Arker:
        return Arker(
            self.server.api_key,
            base_url=self.server.base_url,
            control_url=self.server.control_url,
            max_retries=0,
            timeout=20.0,
        )

    @property
    def engine_root(self) -> Path:
        """Where the running server's store is, seen from this process."""
        root = self.server.data_dir / "engine"
        if not (self.server.data_dir / "storage.btrfs").exists():
            return root
        # The btrfs volume is mounted in the server's private mount namespace only:
        # reach it through the server's root.
        return Path(f"/proc/{self.server.pid}/root{root.resolve()}/btrfs")

    @property
    def tag(self) -> str:
        root = self.server.data_dir / "engine"
        return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]

    def marker(self) -> str:
        return f"{MARK}=crash-{os.getpid()}-{self.generation}"

    def start(self) -> None:
        self.generation += 1
        os.environ[MARK] = self.marker().split("=", 1)[1]
        try:
            self.server.start()
        finally:
            os.environ.pop(MARK, None)
        self.client.close()
        self.client = self._client()

    # -- operations (each runs in a thread while the server gets killed) ---------------

    def op_presigned(self) -> Callable[[], None]:
        data = self.rng.randbytes(6 * CHUNK + self.rng.randrange(CHUNK))
        self.expected[PRESIGNED_PATH].add(hashlib.sha256(data).hexdigest())
        return lambda: self.client.sync.write(self.vm, PRESIGNED_PATH, data)

    def op_chunked(self) -> Callable[[], None]:
        data = self.rng.randbytes(3 * CHUNK)
        digest = hashlib.sha256(data).hexdigest()
        self.expected[CHUNKED_PATH].add(digest)
        upload_id = f"crash-{self.generation}-{self.rng.getrandbits(32):08x}"
        url = f"{self.server.base_url}/api/v1/vms/{self.vm}/sync"
        headers = {"Authorization": f"Bearer {self.server.api_key}"}

        def go() -> None:
            for start in range(0, len(data), CHUNK):
                entry = {
                    "path": CHUNKED_PATH,
                    "size": len(data),
                    "upload_id": upload_id,
                    "start": start,
                    "end": start + CHUNK,
                    "content": base64.b64encode(data[start : start + CHUNK]).decode(),
                    "sha256": digest,
                }
                body = {"op": "write", "writes": [entry]}
                requests.post(url, json=body, headers=headers, timeout=20).raise_for_status()

        return go

    def op_fork(self) -> Callable[[], None]:
        return lambda: self.client.vms.fork(self.vm)

    def op_run(self) -> Callable[[], None]:
        command = (
            "for i in $(seq 100); do echo $i >> /home/user/log; done; "
            "dd if=/dev/urandom of=/home/user/run.bin bs=1M count=4 status=none; cd /tmp"
        )
        return lambda: self.client.runs.create(self.vm, command, timeout=30)

    def op_delete(self) -> Callable[[], None]:
        doomed = self.client.vms.fork(self.vm).vm_id
        self.client.runs.create(doomed, "echo mine > /home/user/own")
        return lambda: self.client.vms.delete(doomed)

    # -- the checks ---------------------------------------------------------------------

    def check_files(self, note: str) -> None:
        for path, ok in self.expected.items():
            try:
                seen: str | None = hashlib.sha256(self.client.sync.read(self.vm, path)).hexdigest()
            except NotFoundError:
                seen = None
            assert seen in ok, f"{note}: {path} is a partial or unknown version"
            self.expected[path] = {seen}

    def check_vms(self, note: str) -> set[str]:
        ids = {vm.vm_id for vm in self.client.vms.list_all()}
        assert self.vm in ids, f"{note}: the trial VM vanished"
        layers = self.chain_depth(self.vm)
        assert layers <= FLATTEN_THRESHOLD + 1, f"{note}: chain of {layers} layers"
        for vm_id in sorted(ids):
            out = self.client.runs.create(vm_id, "true && echo ok > /home/user/.probe", timeout=30)
            assert out.exit_code == 0, f"{note}: {vm_id} cannot run: {out.stderr_text}"
            assert self.client.sync.read(vm_id, "/home/user/.probe") == b"ok\n", note
        return ids

    def chain_depth(self, vm_id: str) -> int:
        meta = json.loads((self.engine_root / "vms" / f"{vm_id}.json").read_bytes())
        return len(meta["layers"])

    def check_mounts(self, note: str) -> None:
        mnt = f"/run/arker-sandbox/{self.tag}"
        data = str(self.server.data_dir)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            leaked = [line for line in fh if mnt in line or data in line]
        assert not leaked, f"{note}: mounts leaked into the host namespace: {leaked}"
        vm_ids = {n[: -len(".json")] for n in os.listdir(self.engine_root / "vms")}
        if os.path.isdir(mnt):
            for name in os.listdir(mnt):
                entry = os.path.join(mnt, name)
                # Start-up removes the mount points of VMs that are gone.
                assert name in vm_ids, f"{note}: stale mount point {entry}"
                assert os.path.isdir(entry) and not os.listdir(entry), f"{note}: {entry}"

    def leftover_processes(self, marker: str) -> list[str]:
        found = []
        needle = marker.encode() + b"\0"
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = fh.read()
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in env or env.endswith(marker.encode()):
                found.append(f"{pid}: {cmd[:120]}")
        return found

    def check_processes(self, old_marker: str, note: str) -> None:
        deadline = time.monotonic() + 5.0
        while (left := self.leftover_processes(old_marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"{note}: processes of the killed server still run: {left}"

    def check_engine_state(self, note: str) -> None:
        vms_dir = self.engine_root / "vms"
        metas = {}
        for name in os.listdir(vms_dir):
            assert not name.endswith(".tmp"), f"{note}: interrupted fork left {name}"
            if name.endswith(".json"):
                metas[name[: -len(".json")]] = json.loads((vms_dir / name).read_bytes())
        used: set[str] = set()
        for meta in metas.values():
            used.update(meta["layers"])
            used.add(meta["upper"])
        on_disk = set(os.listdir(self.engine_root / "layers"))
        assert all(_LAYER.match(n) for n in on_disk), f"{note}: leftovers {on_disk}"
        orphans = on_disk - used
        assert not orphans, f"{note}: layers no VM references: {sorted(orphans)}"
        missing = used - on_disk
        assert not missing, f"{note}: referenced layers missing: {sorted(missing)}"
        db = sqlite3.connect(f"file:{self.server.data_dir / 'arker.db'}?mode=ro", uri=True)
        try:
            db_ids = {str(r[0]) for r in db.execute("SELECT id FROM vms")}
        finally:
            db.close()
        assert set(metas) <= db_ids, f"{note}: engine VMs not in the DB: {set(metas) - db_ids}"
        assert db_ids <= set(metas), f"{note}: DB VMs the engine lacks: {db_ids - set(metas)}"

    def tidy(self, ids: set[str]) -> None:
        """Delete the trial's extra VMs so every check stays quick."""
        for vm_id in ids - {self.vm}:
            with contextlib.suppress(NotFoundError):
                self.client.vms.delete(vm_id)


@pytest.fixture(scope="module", params=["btrfs", "dir"])
def crasher(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Crasher]:
    storage: str = request.param
    if storage == "btrfs" and btrfs_unavailable():
        pytest.skip(f"btrfs storage unavailable: {btrfs_unavailable()}")
    os.environ[MARK] = "crash-setup"
    try:
        server = start_server(
            tmp_path_factory.mktemp("crash") / "data", extra_args=("--storage", storage)
        )
    finally:
        os.environ.pop(MARK, None)
    try:
        yield Crasher(server, random.Random(SEED))
    finally:
        server.stop(signal.SIGTERM)


def test_sigkill_at_random_points_leaves_a_consistent_server(crasher: Crasher) -> None:
    rng = crasher.rng
    plan = [op for _ in range(ROUNDS) for op in OPS]
    rng.shuffle(plan)
    results: list[str] = []
    for trial, op in enumerate(plan):
        delay = rng.uniform(0.0, 0.25 if op in ("presigned", "chunked", "run") else 0.06)
        note = f"seed {SEED} trial {trial} ({op}, kill after {delay * 1000:.0f} ms)"
        action: Callable[[], Any] = getattr(crasher, f"op_{op}")()
        outcome: list[str] = []

        def body(action: Callable[[], Any] = action, outcome: list[str] = outcome) -> None:
            try:
                action()
                outcome.append("done")
            except Exception as exc:  # the server dies under it: any error is fine
                outcome.append(type(exc).__name__)

        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        time.sleep(delay)
        old_marker = crasher.marker()
        crasher.server.stop(signal.SIGKILL)
        worker.join(30)
        assert not worker.is_alive(), f"{note}: the operation hung after the kill"
        crasher.start()
        crasher.check_processes(old_marker, note)
        crasher.check_mounts(note)
        crasher.check_engine_state(note)
        crasher.check_files(note)
        ids = crasher.check_vms(note)
        crasher.tidy(ids)
        depth = crasher.chain_depth(crasher.vm)
        results.append(f"{op}:{outcome[0] if outcome else '?'}:depth={depth}")
    print(f"crash trials (seed {SEED}): {results}")
    assert len(results) >= 20
