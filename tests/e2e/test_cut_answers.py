"""Answers cut after the server acted: no orphan, no duplicate, every failure accounted for.

The real SDK talks to a real `arker serve` through the `FaultProxy`, whose ``cut_*``
faults (`CUT_FAULTS`) let the server act and then cut its answer: after the headers,
mid-body, or mid-headers. Then a direct client (no proxy) counts the side effects:

* no orphan: every VM that exists was reported, as forked or as an
  `OutcomeUnknownError` carrying its fork's idempotency key;
* no duplicate: one VM per fork key; a run's line appears at most once in the log
  (exactly once when it was reported as done);
* every failure the SDK reported is either a clean refusal (nothing happened) or an
  `OutcomeUnknownError` (a fork's or run's carries its key; a write's, idempotent by
  its upload id, carries none), and the same call with the same key resolves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from arker import ARKUNTU_ID, Arker, ArkerError, NotFoundError, OutcomeUnknownError
from tests.kit.faultproxy import CUT_FAULTS, FaultPlan, FaultProxy

pytestmark = pytest.mark.e2e

LOG = "/home/user/log"
SIZES = (1000, 64 * 1024, 1_000_000, 5_000_000)  # 5 MB: over the inline limit (presigned)
RANDOM_OPS = 36
RANDOM_FAULT_CAP = 24


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _on_the_api(method: str, path: str) -> bool:
    return path.startswith("/api/v1/vms/")


@dataclass
class Op:
    kind: str  # fork, run, write
    key: str | None  # the fork's or run's idempotency key
    target: str  # fork: VM name; run: token; write: path
    sha: str = ""  # write: the content's digest
    vm_id: str | None = None  # fork: the VM reported
    error: ArkerError | None = None


@dataclass
class Setup:
    server: Any
    key: str
    direct: Arker
    work: str
    prefix: str


@pytest.fixture
def setup(arker_server: Any) -> Iterator[Setup]:
    prefix = f"cut{uuid.uuid4().hex[:6]}"
    key = arker_server.create_key(f"cut-answers-{prefix}")
    direct = Arker(key, base_url=arker_server.base_url, control_url=arker_server.control_url)
    work = direct.vms.fork(ARKUNTU_ID, name=f"{prefix}-work").vm_id
    direct.sync.write(work, LOG, b"")
    try:
        yield Setup(arker_server, key, direct, work, prefix)
    finally:
        for vm in list(direct.vms.list_all(q=prefix)):
            with contextlib.suppress(NotFoundError):
                direct.vms.delete(vm.vm_id)
        direct.close()


def _client(setup: Setup, proxy: FaultProxy, retries: int) -> Arker:
    return Arker(
        setup.key,
        base_url=proxy.url,
        control_url=proxy.url,
        max_retries=retries,
        sleep=lambda s: None,
    )


def _fork(client: Arker, setup: Setup, i: int) -> Op:
    op = Op("fork", f"{setup.prefix}-fork-{i}-{uuid.uuid4().hex[:6]}", f"{setup.prefix}f{i}")
    try:
        op.vm_id = client.vms.fork(ARKUNTU_ID, name=op.target, idempotency_key=op.key).vm_id
    except ArkerError as exc:
        op.error = exc
    return op


def _run(client: Arker, setup: Setup, i: int) -> Op:
    op = Op("run", f"{setup.prefix}-run-{i}-{uuid.uuid4().hex[:6]}", f"T{i}x{uuid.uuid4().hex}")
    try:
        result = client.runs.create(
            setup.work, f"echo {op.target} >> {LOG}", idempotency_key=op.key
        )
        assert result.exit_code == 0, result
    except ArkerError as exc:
        op.error = exc
    return op


def _write(client: Arker, setup: Setup, i: int, data: bytes) -> Op:
    op = Op("write", None, f"/home/user/w{i}.bin", _sha(data))
    try:
        client.sync.write(setup.work, op.target, data)
    except ArkerError as exc:
        op.error = exc
    return op


def _account(setup: Setup, ops: list[Op]) -> Counter[str]:
    """Check every side effect against what the SDK reported; resolve the unknowns."""
    direct, outcome = setup.direct, Counter[str]()
    found: dict[str, list[str]] = {}
    for vm in direct.vms.list_all(q=f"{setup.prefix}f"):
        found.setdefault(vm.name or "", []).append(vm.vm_id)
    reported = {op.target for op in ops if op.kind == "fork" and (op.vm_id or _unknown(op))}
    assert set(found) <= reported, f"orphan VMs: {set(found) - reported}"
    log = Counter(direct.sync.read(setup.work, LOG).decode().split())
    for op in ops:
        unknown = isinstance(op.error, OutcomeUnknownError)
        if unknown:
            assert isinstance(op.error, OutcomeUnknownError)
            assert op.error.idempotency_key == op.key, (op, op.error)
        outcome[f"{op.kind}:{type(op.error).__name__ if op.error else 'ok'}"] += 1
        if op.kind == "fork":
            ids = found.get(op.target, [])
            if op.error is None:
                assert ids == [op.vm_id], (op, ids)
            elif unknown:
                assert len(ids) <= 1, (op, ids)
                again = direct.vms.fork(ARKUNTU_ID, name=op.target, idempotency_key=op.key)
                assert ids in ([], [again.vm_id]), (op, ids, again)
                now = direct.vms.list_all(q=op.target)
                assert [vm.vm_id for vm in now if vm.name == op.target] == [again.vm_id], op
            else:
                assert ids == [], f"{op.target}: failed with {op.error!r} yet exists"
        elif op.kind == "run":
            if op.error is None:
                assert log[op.target] == 1, (op, log[op.target])
            elif unknown:
                assert log[op.target] <= 1, (op, log[op.target])
                direct.runs.create(setup.work, f"echo {op.target} >> {LOG}", idempotency_key=op.key)
            else:
                assert log[op.target] == 0, f"run failed with {op.error!r} yet ran"
        else:
            try:
                got: str | None = _sha(direct.sync.read(setup.work, op.target))
            except NotFoundError:
                got = None
            if op.error is None:
                assert got == op.sha, op
            elif unknown:
                assert got in (None, op.sha), f"{op.target}: torn after {op.error!r}"
            else:
                assert got is None, f"{op.target}: failed with {op.error!r} yet written"
    # Resolving replayed, never repeated: each run that may have happened is there once.
    log = Counter(direct.sync.read(setup.work, LOG).decode().split())
    for op in ops:
        if op.kind == "run":
            assert log[op.target] == (0 if op.error and not _unknown(op) else 1), op
    return outcome


def _unknown(op: Op) -> bool:
    return isinstance(op.error, OutcomeUnknownError)


def _each_op_cut_once(setup: Setup, fault: str, retries: int, seed: int) -> list[Op]:
    """A fork, a run and a write of each size, each with ``fault`` forced on its first
    API answer, through a client that retries ``retries`` times."""
    plan = FaultPlan(rate=0.0, applies=_on_the_api)
    rng = random.Random(seed)
    ops: list[Op] = []
    with FaultProxy(setup.server.base_url, plan) as proxy:
        client = _client(setup, proxy, retries=retries)
        try:
            plan.force(fault)
            ops.append(_fork(client, setup, 0))
            plan.force(fault)
            ops.append(_run(client, setup, 1))
            for i, size in enumerate(SIZES, start=2):
                plan.force(fault)
                ops.append(_write(client, setup, i, rng.randbytes(size)))
        finally:
            client.close()
    assert plan.injected[fault] == 2 + len(SIZES)
    return ops


@pytest.mark.parametrize("fault", CUT_FAULTS)
def test_a_cut_answer_is_retried_with_its_key_and_acted_once(setup: Setup, fault: str) -> None:
    ops = _each_op_cut_once(setup, fault, retries=2, seed=10)
    assert [op.error for op in ops] == [None] * len(ops)
    _account(setup, ops)


@pytest.mark.parametrize("fault", CUT_FAULTS)
def test_a_cut_answer_without_retries_is_an_outcome_unknown_with_its_key(
    setup: Setup, fault: str
) -> None:
    ops = _each_op_cut_once(setup, fault, retries=0, seed=11)
    # The server acted on each: the fork, the run and the inline writes may have happened;
    # the large write's cut answer was its presign request, which changes nothing.
    assert [_unknown(op) for op in ops] == [True] * (len(ops) - 1) + [False]
    assert ops[-1].error is not None
    outcome = _account(setup, ops)
    print(f"\n{fault}: {dict(outcome)}")


def test_random_cut_answers_leave_no_orphan_and_no_duplicate(setup: Setup) -> None:
    plan = FaultPlan(seed=10, rate=0.3, faults=CUT_FAULTS, max_faults=RANDOM_FAULT_CAP)
    rng = random.Random(10)
    ops: list[Op] = []
    with FaultProxy(setup.server.base_url, plan) as proxy:
        client = _client(setup, proxy, retries=1)
        try:
            for i in range(RANDOM_OPS):
                kind = rng.choice(("fork", "run", "run", "write", "write"))
                if kind == "fork":
                    ops.append(_fork(client, setup, i))
                elif kind == "run":
                    ops.append(_run(client, setup, i))
                else:
                    ops.append(_write(client, setup, i, rng.randbytes(rng.choice(SIZES))))
        finally:
            client.close()
    outcome = _account(setup, ops)
    print(f"\nfaults {dict(plan.injected)}; outcomes {dict(outcome)}")
    assert 0 < sum(plan.injected.values()) <= RANDOM_FAULT_CAP
