"""Exactly-once under faults: mixed operations through the fault proxy, then the truth.

Each seed drives a few hundred forks, runs, writes, reads, lists and deletes through a
`FaultProxy` (25 % of requests get a fault, answers cut after the server acted included)
with a short read timeout and no sleeping between retries. Every call either succeeds or
raises a documented `ArkerError`; a model records what each outcome implies. Afterwards
a fault-free client checks the server:

* forks: one VM per idempotency key. A successful fork made exactly one VM (the one it
  returned); a fork that failed with anything but `OutcomeUnknownError` made none; an
  `OutcomeUnknownError` is resolved the documented way (same call, same key) and the
  key must then map to exactly one VM;
* runs (``echo TOKEN >> /home/user/log``): every successful run's token is in the log
  exactly once, a run that failed for sure not at all, an unknown one at most once —
  and exactly once after resolving it with its key;
* writes: every successful write reads back with its sha256; a failed one left the file
  absent or whole; no read ever saw anything but a complete version of the file;
* deletes: a successful delete leaves no VM behind; lists never show a name twice.

``ARKER_FAULT_SEEDS=1,2,3,...`` and ``ARKER_FAULT_OPS=N`` run more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from arker import (
    ARKUNTU_ID,
    APIConnectionError,
    APITimeoutError,
    Arker,
    ArkerError,
    InternalServerError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
)
from arker.local.engine_api import SandboxError
from tests.kit.faultproxy import ALL_FAULTS, CUT_FAULTS, FaultPlan, FaultProxy

pytestmark = pytest.mark.e2e

SEEDS = [int(s) for s in os.environ.get("ARKER_FAULT_SEEDS", "1,2,3").split(",") if s.strip()]
OPS = int(os.environ.get("ARKER_FAULT_OPS", "100"))
READ_TIMEOUT_S = 1.0
DELAY_S = 1.6  # above the read timeout: a delayed request trips it, then lands late
LOG = "/home/user/log"
SHARED_PATHS = [f"/home/user/shared{i}.bin" for i in range(3)]
WEIGHTS = {"fork": 15, "run": 30, "write": 25, "read": 15, "list": 7, "delete": 8}

# Failures a call may end in once its retries ran out under these faults.
TRANSIENT = (
    OutcomeUnknownError,
    APITimeoutError,
    APIConnectionError,
    ServiceUnavailableError,
    RateLimitError,
    InternalServerError,  # the throttle envelope, retried and exhausted
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Fork:
    key: str
    name: str
    source: str  # the arkuntu id (fork by id) or the work VM's name (fork by name)
    vm_id: str | None = None  # known when the call succeeded (or was resolved)
    error: ArkerError | None = None
    deleted: bool = False  # a delete of it succeeded
    delete_tried: bool = False


@dataclass
class Model:
    seed: int
    forks: list[Fork] = field(default_factory=list)
    runs: list[tuple[str, str, ArkerError | None]] = field(default_factory=list)
    # path -> [(sha, ok)] in call order; ok False means the write raised
    writes: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)


def _note(model: Model, op: str, exc: ArkerError) -> None:
    assert isinstance(exc, TRANSIENT), f"{op}: undocumented failure under faults: {exc!r}"
    model.errors[f"{op}:{type(exc).__name__}"] += 1


def _drive(client: Arker, work: str, model: Model, rng: random.Random, ops: int) -> None:
    seed = model.seed
    kinds = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    fresh_paths = 0
    for i in range(ops):
        op = rng.choices(kinds, weights)[0]
        if op == "delete" and not [f for f in model.forks if f.vm_id and not f.delete_tried]:
            op = "fork"
        model.ops[op] += 1
        if op == "fork":
            source = ARKUNTU_ID if rng.random() < 0.7 else f"eo{seed}-work"
            fork = Fork(f"eo-{seed}-{i}-{uuid.uuid4().hex[:8]}", f"eo{seed}f{i}", source)
            model.forks.append(fork)
            try:
                fork.vm_id = client.vms.fork(
                    fork.source, name=fork.name, idempotency_key=fork.key
                ).vm_id
            except ArkerError as exc:
                _note(model, op, exc)
                fork.error = exc
        elif op == "run":
            token = f"T{seed}x{i}x{uuid.uuid4().hex[:8]}"
            key = f"eo-run-{seed}-{i}-{uuid.uuid4().hex[:8]}"
            try:
                result = client.runs.create(work, f"echo {token} >> {LOG}", idempotency_key=key)
                assert result.exit_code == 0, result
                model.runs.append((token, key, None))
            except ArkerError as exc:
                _note(model, op, exc)
                model.runs.append((token, key, exc))
        elif op == "write":
            if rng.random() < 0.35:
                path = rng.choice(SHARED_PATHS)
            else:
                fresh_paths += 1
                path = f"/home/user/w{seed}-{fresh_paths}.bin"
            size = rng.choice([0, 1, 100, 4096, 65536, 300_000])
            if rng.random() < 0.03:
                size = 4 * 1024 * 1024 + 12345  # over the inline limit: presigned PUT
            data = rng.randbytes(size)
            history = model.writes.setdefault(path, [])
            try:
                client.sync.write(work, path, data)
                history.append((_sha(data), True))
            except ArkerError as exc:
                _note(model, op, exc)
                history.append((_sha(data), False))
        elif op == "read":
            candidates = list(model.writes)
            if not candidates:
                continue
            path = rng.choice(candidates)
            history = list(model.writes[path])
            try:
                got = client.sync.read(work, path)
            except NotFoundError:
                # Only possible while no write to it has succeeded yet.
                assert not any(ok for _, ok in history), f"{path} vanished"
            except ArkerError as exc:
                _note(model, op, exc)
            else:
                # Never a half-written file: some complete version that was sent.
                assert _sha(got) in {sha for sha, _ in history}, f"{path}: torn read"
        elif op == "list":
            try:
                page = client.vms.list(q=f"eo{seed}f", limit=100)
            except ArkerError as exc:
                _note(model, op, exc)
            else:
                names = Counter(vm.name for vm in page.items)
                assert not [n for n, c in names.items() if c > 1], f"duplicate VMs: {names}"
        else:  # delete
            fork = rng.choice([f for f in model.forks if f.vm_id and not f.delete_tried])
            fork.delete_tried = True
            assert fork.vm_id is not None
            try:
                client.vms.delete(fork.vm_id)
                fork.deleted = True
            except ArkerError as exc:
                _note(model, op, exc)


def _names(direct: Arker, seed: int) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for vm in direct.vms.list_all(q=f"eo{seed}f", sort="created_at"):
        found.setdefault(vm.name or "", []).append(vm.vm_id)
    return found


def _check(direct: Arker, work: str, model: Model) -> dict[str, int]:
    seed = model.seed
    outcome = Counter[str]()

    # -- forks ---------------------------------------------------------------------------
    found = _names(direct, seed)
    for fork in model.forks:
        ids = found.get(fork.name, [])
        if fork.error is None:
            assert fork.vm_id is not None
            expected = [] if fork.deleted else [fork.vm_id]
            if fork.delete_tried and not fork.deleted:
                assert ids in ([], [fork.vm_id]), (fork, ids)
            else:
                assert ids == expected, (fork, ids)
            outcome["fork_ok"] += 1
        elif isinstance(fork.error, OutcomeUnknownError):
            assert len(ids) <= 1, (fork, ids)
            assert fork.error.idempotency_key == fork.key
            # The documented way out: the same call with the same key.
            fork.vm_id = direct.vms.fork(
                fork.source, name=fork.name, idempotency_key=fork.error.idempotency_key
            ).vm_id
            if ids:
                assert ids == [fork.vm_id], (fork, ids)
            outcome["fork_unknown_happened" if ids else "fork_unknown_not_yet"] += 1
        else:
            assert ids == [], f"{fork.name} failed with {fork.error!r} yet exists: {ids}"
            outcome["fork_failed"] += 1
    found = _names(direct, seed)
    for fork in model.forks:
        if isinstance(fork.error, OutcomeUnknownError):
            assert found.get(fork.name) == [fork.vm_id], (fork, found.get(fork.name))
            # Resolving again replays: still one VM for the key.
            again = direct.vms.fork(fork.source, name=fork.name, idempotency_key=fork.key)
            assert again.vm_id == fork.vm_id
    assert len(_names(direct, seed)) == len(found)

    # -- runs ----------------------------------------------------------------------------
    lines = Counter(direct.sync.read(work, LOG).decode().split())
    for token, _key, error in model.runs:
        if error is None:
            assert lines[token] == 1, (token, lines[token])
            outcome["run_ok"] += 1
        elif isinstance(error, OutcomeUnknownError):
            assert lines[token] <= 1, (token, lines[token])
            outcome["run_unknown_happened" if lines[token] else "run_unknown_not_yet"] += 1
        else:
            assert lines[token] == 0, f"run failed with {error!r} yet ran"
            outcome["run_failed"] += 1
    for token, key, error in model.runs:
        if isinstance(error, OutcomeUnknownError):
            assert error.idempotency_key == key
            direct.runs.create(work, f"echo {token} >> {LOG}", idempotency_key=key)
    lines = Counter(direct.sync.read(work, LOG).decode().split())
    for token, _key, error in model.runs:
        want = 0 if error is not None and not isinstance(error, OutcomeUnknownError) else 1
        assert lines[token] == want, (token, lines[token], error)
    assert sum(lines.values()) == sum(
        1 for _, _, e in model.runs if e is None or isinstance(e, OutcomeUnknownError)
    )

    # -- files ---------------------------------------------------------------------------
    for path, history in model.writes.items():
        try:
            got: bytes | None = direct.sync.read(work, path)
        except NotFoundError:
            got = None
        succeeded = [i for i, (_, ok) in enumerate(history) if ok]
        if got is None:
            assert not succeeded, f"{path}: a successful write is missing"
            outcome["file_absent_after_failures"] += 1
            continue
        sha = _sha(got)
        # The last successful write's bytes, or (a late duplicate of) a failed write's;
        # never an earlier success (its upload id is spent) and never a torn file.
        allowed = {history[succeeded[-1]][0]} if succeeded else set()
        allowed |= {s for s, ok in history if not ok}
        assert sha in allowed, f"{path}: content matches no complete write"
        outcome["file_ok"] += 1
    return dict(outcome)


@pytest.mark.parametrize("seed", SEEDS)
def test_exactly_once_under_faults(arker_server: Any, seed: int) -> None:
    key = arker_server.create_key(f"exactly-once-{seed}-{uuid.uuid4().hex[:6]}")
    direct = Arker(key, base_url=arker_server.base_url, control_url=arker_server.control_url)
    work = direct.vms.fork(ARKUNTU_ID, name=f"eo{seed}-work").vm_id
    direct.sync.write(work, LOG, b"")
    plan = FaultPlan(seed=seed, rate=0.25, delay_s=DELAY_S, faults=ALL_FAULTS + CUT_FAULTS)
    model = Model(seed)
    try:
        with FaultProxy(arker_server.base_url, plan) as proxy:
            client = Arker(
                key,
                base_url=proxy.url,
                control_url=proxy.url,
                timeout=Timeout(connect=5.0, read=READ_TIMEOUT_S),
                max_retries=1,
                sleep=lambda s: None,
            )
            try:
                _drive(client, work, model, random.Random(seed), OPS)
            finally:
                client.close()
            # Let requests the proxy still holds (``delay``) land before the checks.
            time.sleep(DELAY_S + 0.5)
        outcome = _check(direct, work, model)
        print(
            f"\nseed {seed}: ops {dict(model.ops)}; faults {dict(plan.injected)}; "
            f"errors {dict(model.errors)}; outcomes {outcome}"
        )
        assert sum(plan.injected.values()) > 0
    finally:
        for vm in list(direct.vms.list_all(q=f"eo{seed}")):
            with contextlib.suppress(NotFoundError):
                direct.vms.delete(vm.vm_id)
        direct.close()


# -- the server's idempotency layer on its own (no sandbox needed) ---------------------------


class _Engine:
    """Counts commands that ran; fails the way it is told to."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.fail: tuple[str, bool] | None = None  # (code, after the command ran?)

    def run(self, vm_id: str, command: str, *, session: str, timeout: float) -> Any:
        if self.fail is not None and not self.fail[1]:
            raise SandboxError(self.fail[0], "refused before running")
        self.ran.append(command)
        if self.fail is not None:
            raise SandboxError(self.fail[0], "broke after running")
        raise AssertionError("only failures are exercised here")


@pytest.fixture
def idem(tmp_path: Any) -> Any:
    from arker.local.config import REGION, ServerConfig
    from arker.local.idempotency import Idempotency
    from arker.local.store import Store, VmRow, utc_now_iso
    from arker.local.vms import Vms

    store = Store(tmp_path / "db.sqlite")
    org = store.ensure_org("o")
    store.insert_vm(VmRow("vm1", org, None, False, ARKUNTU_ID, REGION, utc_now_iso(), None))
    engine = _Engine()
    vms = Vms(store, engine, ServerConfig(data_dir=tmp_path))  # type: ignore[arg-type]
    return org, Idempotency(store), vms, engine


def _run_keyed(idem: Any, key: str, command: str) -> None:
    from arker._wire import RunRequest

    org, idempotency, vms, _ = idem
    body = RunRequest(command=command)
    idempotency.execute(
        org, "run:vm1", key, body.model_dump(mode="json"), lambda: vms.run(org, "vm1", body)
    )


def test_run_error_after_the_command_ran_is_replayed_not_rerun(idem: Any) -> None:
    from arker.local.errors import ApiError

    engine = idem[3]
    engine.fail = ("payload_too_large", True)  # e.g. the command broke the disk quota
    for _ in range(3):  # the first answer was lost; the SDK (or the user) retries
        with pytest.raises(ApiError) as info:
            _run_keyed(idem, "k1", "echo once >> log")
        assert info.value.code == "payload_too_large"
    assert engine.ran == ["echo once >> log"]
    with pytest.raises(ApiError):  # another key is another run
        _run_keyed(idem, "k2", "echo once >> log")
    assert len(engine.ran) == 2


def test_busy_session_is_not_stored(idem: Any) -> None:
    from arker.local.errors import ApiError

    engine = idem[3]
    engine.fail = ("vm_busy", False)
    with pytest.raises(ApiError) as info:
        _run_keyed(idem, "k3", "true")
    assert info.value.code == "vm_busy"
    engine.fail = ("internal", True)
    with pytest.raises(ApiError) as info:
        _run_keyed(idem, "k3", "true")  # the retry got to run this time
    assert info.value.code == "internal"
    assert engine.ran == ["true"]


# -- duplicates that overlap the first attempt (the client gave up, the server did not) -----


def _post(server: Any, key: str, path: str, body: dict[str, Any], timeout: float) -> Any:
    import requests

    return requests.post(
        f"{server.base_url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {server.api_key}", "Idempotency-Key": key},
        timeout=timeout,
    )


def test_in_flight_duplicates_wait_for_the_first(arker_server: Any, arker_client: Arker) -> None:
    import requests

    work = arker_client.vms.fork(ARKUNTU_ID, name="eo-inflight").vm_id
    try:
        token = f"I{uuid.uuid4().hex}"
        key = f"inflight-{token}"
        path = f"/api/v1/vms/{work}/run"
        body = {"command": f"sleep 1; echo {token} >> {LOG}; echo {token}", "session_id": 0}
        # The first attempt's answer never arrives (the client's read timeout)...
        with pytest.raises(requests.Timeout):
            _post(arker_server, key, path, body, timeout=0.2)
        # ...and its retries arrive while the command still runs: they wait for it.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: _post(arker_server, key, path, body, timeout=60), range(4))
            )
        assert [a.status_code for a in answers] == [200] * 4
        assert {a.json()["stdout"] for a in answers} == {f"{token}\n"}
        log = arker_client.sync.read(work, LOG).decode().split()
        assert log.count(token) == 1
        # A retry after it finished replays it too; another body with the key is refused.
        assert _post(arker_server, key, path, body, timeout=60).json()["stdout"] == f"{token}\n"
        other = _post(arker_server, key, path, {**body, "command": "true"}, timeout=60)
        assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
        assert arker_client.sync.read(work, LOG).decode().split().count(token) == 1

        # Concurrent forks with one key make one VM.
        name = f"eo-inflight-{token[:8]}"
        fork_path = f"/api/v1/vms/{ARKUNTU_ID}/fork"
        fork_body = {"is_public": False, "name": name}

        def fork(_: int) -> Any:
            return _post(arker_server, f"f-{token}", fork_path, fork_body, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            forks = list(pool.map(fork, range(6)))
        assert len({f.json()["vm_id"] for f in forks}) == 1
        made = list(arker_client.vms.list_all(q=name))
        assert [vm.vm_id for vm in made] == [forks[0].json()["vm_id"]]
        arker_client.vms.delete(made[0].vm_id)
    finally:
        arker_client.vms.delete(work)
