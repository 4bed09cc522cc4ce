"""Many concurrent clients against one `arker serve`: latency per route, errors by class.

Starts its own `arker serve` on loopback (root + bubblewrap) and runs ``--clients``
threads for ``--seconds`` (or until each has made ``--max-ops`` operations), each with
its own `Arker` client (or, with ``--shared-client``, one client shared by all), doing a
mixed workload:

* ``fork`` + ``delete``: a throwaway child of the client's own VM (at most
  ``--max-forks`` per client, each deleted right away);
* ``run``: a short command in the client's own VM, output checked;
* ``run-shared``: a short command in a VM and session shared by 4 clients, to provoke
  ``vm_busy`` (documented: the session is still running another command);
* ``write``/``read``: small files (0.1–4 KiB) written then read back and compared, and
  a few (at most ``--max-large`` in all) 1–8 MiB files through presigned transfers;
* ``list``: one page of VMs.

Every HTTP attempt is also recorded from the SDK's ``arker`` logger, so the route table
shows what went over the wire (retries and 5xx included). It prints, it does not assert;
the last line is the verdict: no errors beyond the documented ``vm_busy``::

    python benchmarks/load.py [--clients 16] [--seconds 60] [--seed 1]

With ``--two-orgs``, the fair-shares scenario instead: a bystander organisation times
``/health`` and an ``echo`` run alone, then again while a greedy organisation keeps
``--greedy`` (45) ``sleep`` runs going in separate sessions (honouring each ``429``'s
``Retry-After``); it prints the bystander's p50/p99 both ways and the p99 ratio
saturated/solo (the verdict: within 2×)::

    python benchmarks/load.py --two-orgs [--greedy 45] [--sleep 20] [--samples 40]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import re
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from _server import local_server

from arker import Arker, QuotaExceededError, VmBusyError
from arker.testing import ArkerServer

SHARED_GROUP = 4  # clients per shared VM
KIB = 1024
MIB = 1024 * KIB


class Mismatch(Exception):
    """An answer that succeeded but carried the wrong content."""


@dataclass
class Stats:
    """Everything the workers and the log handler record; one lock guards it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    op_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    op_errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    route_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    route_status: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    error_examples: dict[str, str] = field(default_factory=dict)
    slowest: list[tuple[float, str, float]] = field(default_factory=list)  # ms, op, at s
    large_left: int = 0
    started: float = field(default_factory=time.monotonic)

    def op(self, name: str, ms: float, error: BaseException | None) -> None:
        at = time.monotonic() - self.started - ms / 1000
        with self.lock:
            self.op_ms[name].append(ms)
            self.slowest.append((ms, name, at))
            if len(self.slowest) > 64:
                self.slowest = sorted(self.slowest, reverse=True)[:8]
            if error is not None:
                kind = type(error).__name__
                self.op_errors[name][kind] += 1
                self.error_examples.setdefault(f"{name}: {kind}", str(error)[:300])

    def take_large(self) -> bool:
        with self.lock:
            if self.large_left <= 0:
                return False
            self.large_left -= 1
            return True


_ID = re.compile(r"/vms/[^/]+")
_UPLOAD = re.compile(r"/upload/[^/]+")
_PRESIGNED = re.compile(r"/presigned/[^/]+")


def route_of(method: str, url: str) -> str:
    """``POST /api/v1/vms/{id}/run`` from a full URL (ids and query strings dropped)."""
    path = urlsplit(url).path
    if path != "/api/v1/vms/list" and path != "/api/v1/vms/fork":
        path = _ID.sub("/vms/{id}", path)
    path = _PRESIGNED.sub("/presigned/{id}", _UPLOAD.sub("/upload/{upload}", path))
    return f"{method} {path}"


class RouteRecorder(logging.Handler):
    """Collects the SDK's one-record-per-HTTP-attempt log lines."""

    def __init__(self, stats: Stats) -> None:
        super().__init__(logging.INFO)
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        method = getattr(record, "arker_method", None)
        url = getattr(record, "arker_url", None)
        if method is None or url is None:
            return  # a "retrying after…" line: the attempts themselves are counted
        status = getattr(record, "arker_status", None)
        route = route_of(method, url)
        with self.stats.lock:
            self.stats.route_ms[route].append(float(getattr(record, "arker_duration_ms", 0.0)))
            self.stats.route_status[route][str(status) if status else "no response"] += 1


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Worker:
    """One client thread; all randomness comes from its own seeded `random.Random`."""

    def __init__(
        self,
        index: int,
        client: Arker,
        shared_vm: str,
        stats: Stats,
        deadline: float,
        args: argparse.Namespace,
    ) -> None:
        self.index = index
        self.client = client
        self.shared_vm = shared_vm
        self.stats = stats
        self.deadline = deadline
        self.args = args
        self.rng = random.Random(args.seed * 1000 + index)
        self.forks = 0
        self.ops = 0
        self.vm = ""
        self.files: dict[str, str] = {}  # path -> sha256 of what this worker wrote last

    def timed(self, name: str, fn: Callable[[], object]) -> object:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return fn()
        except VmBusyError as exc:
            error = exc
            return None
        except Exception as exc:
            error = exc
            return None
        finally:
            self.ops += 1
            self.stats.op(name, (time.perf_counter() - started) * 1000, error)

    def run(self) -> None:
        result = self.timed("fork", lambda: self.client.vms.fork("arkuntu").vm_id)
        if not isinstance(result, str):
            return
        self.vm = result
        choices: list[tuple[Callable[[], None], int]] = [
            (self.do_run, 30),
            (self.do_run_shared, 15),
            (self.do_small, 25),
            (self.do_large, 3),
            (self.do_list, 12),
            (self.do_fork_delete, 8),
        ]
        actions = [a for a, _ in choices]
        weights = [w for _, w in choices]
        while time.monotonic() < self.deadline and self.ops < self.args.max_ops:
            self.rng.choices(actions, weights)[0]()
        self.timed("delete", lambda: self.client.vms.delete(self.vm))

    def do_run(self) -> None:
        token = f"t{self.index}-{self.rng.getrandbits(32)}"
        session = self.rng.randrange(3)

        def call() -> None:
            out = self.client.runs.create(self.vm, f"echo {token}", session_id=session)
            if out.stdout != f"{token}\n".encode() or out.exit_code != 0:
                raise Mismatch(f"run echo {token}: {out.stdout!r} exit {out.exit_code}")

        self.timed("run", call)

    def do_run_shared(self) -> None:
        token = f"s{self.index}-{self.rng.getrandbits(32)}"

        def call() -> None:
            out = self.client.runs.create(
                self.shared_vm, f"sleep 0.05; echo {token}", session_id="shared"
            )
            if out.stdout != f"{token}\n".encode():
                raise Mismatch(f"shared run {token}: {out.stdout!r}")

        self.timed("run-shared", call)

    def _write_read(self, kind: str, size: int) -> None:
        path = f"/home/user/{kind}-{self.index}-{self.rng.randrange(4)}.bin"
        data = self.rng.randbytes(size)
        digest = hashlib.sha256(data).hexdigest()
        self.timed(f"write-{kind}", lambda: self.client.sync.write(self.vm, path, data))
        self.files[path] = digest

        def read() -> None:
            got = self.client.sync.read(self.vm, path)
            if hashlib.sha256(got).hexdigest() != digest:
                raise Mismatch(f"read {path}: {len(got)} bytes, not the {size} written")

        self.timed(f"read-{kind}", read)

    def do_small(self) -> None:
        self._write_read("small", self.rng.randint(100, 4 * KIB))

    def do_large(self) -> None:
        if self.stats.take_large():
            self._write_read("large", self.rng.randint(1 * MIB, 8 * MIB))
        else:
            self.do_small()

    def do_list(self) -> None:
        self.timed("list", lambda: self.client.vms.list(limit=25))

    def do_fork_delete(self) -> None:
        if self.forks >= self.args.max_forks:
            self.do_list()
            return
        self.forks += 1
        child = self.timed("fork", lambda: self.client.vms.fork(self.vm).vm_id)
        if isinstance(child, str):
            self.timed("delete", lambda: self.client.vms.delete(child))


def print_table(title: str, ms: dict[str, list[float]], counts: dict[str, Counter[str]]) -> None:
    print(f"\n{title}")
    print(f"{'':<44} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  outcomes")
    for name in sorted(ms):
        samples = ms[name]
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(counts[name].items()))
        print(
            f"{name:<44} {len(samples):>6} {percentile(samples, 0.5):>8.1f} "
            f"{percentile(samples, 0.99):>8.1f} {max(samples):>8.1f}  {outcomes}"
        )


def report(stats: Stats, elapsed: float, server: ArkerServer) -> None:
    op_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for name, samples in stats.op_ms.items():
        failed = sum(stats.op_errors[name].values())
        op_outcomes[name]["ok"] = len(samples) - failed
        op_outcomes[name].update(stats.op_errors[name])
    total_ops = sum(len(s) for s in stats.op_ms.values())
    print(f"\n{total_ops} SDK operations in {elapsed:.1f} s ({total_ops / elapsed:.0f}/s)")
    print_table("SDK operations (one call, retries included)", stats.op_ms, op_outcomes)
    print_table("HTTP routes (one row per attempt, from the SDK log)", stats.route_ms,
                stats.route_status)  # fmt: skip

    by_class: Counter[str] = Counter()
    for counter in stats.op_errors.values():
        by_class.update(counter)
    slowest = ", ".join(
        f"{op} {ms:.0f} ms at {at:.1f} s" for ms, op, at in sorted(stats.slowest, reverse=True)[:8]
    )
    print(f"\nslowest operations (started at, seconds into the run): {slowest}")
    print("\nerrors by class:", dict(by_class) or "none")
    for key, example in sorted(stats.error_examples.items()):
        print(f"  {key}: {example}")

    unexpected_ops = {k: v for k, v in by_class.items() if k != "VmBusyError"}
    unexpected_http: dict[str, int] = {}
    for route, statuses in stats.route_status.items():
        for status, n in statuses.items():
            ok = status.startswith("2") or (status == "409" and route.endswith("/run"))
            if not ok:
                unexpected_http[f"{route} -> {status}"] = n
    log_lines = server_log_problems(server)
    if log_lines:
        print(f"\nserver log: {len(log_lines)} warning/error lines, first ones:")
        for line in log_lines[:10]:
            print("  " + line)
    busy = by_class.get("VmBusyError", 0)
    if not unexpected_ops and not unexpected_http:
        print(f"\nVERDICT: PASS — no errors beyond documented vm_busy ({busy} vm_busy)")
    else:
        print(
            f"\nVERDICT: FAIL — unexpected errors {unexpected_ops or '{}'}, "
            f"unexpected HTTP statuses {unexpected_http or '{}'} ({busy} vm_busy)"
        )


def server_log_problems(server: ArkerServer) -> list[str]:
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return []
    pattern = re.compile(r"Traceback|ERROR|WARNING|Exception| 5\d\d ")
    return [line for line in text.splitlines() if pattern.search(line)]


def two_orgs(args: argparse.Namespace) -> None:
    """One org saturating its share of runs; the other's latency, solo and saturated."""
    with local_server() as (server, greedy_admin):
        print(f"arker serve pid {server.pid} on {server.base_url}")
        key = server.create_key("bystander")
        bystander = Arker(key, base_url=server.base_url, control_url=server.control_url)
        own_vm = bystander.vms.fork("arkuntu", name="bystander").vm_id
        greedy_vms = [greedy_admin.vms.fork("arkuntu", name=f"greedy-{i}").vm_id for i in range(3)]
        health_url = f"{server.base_url}/api/v1/health"

        def measure(label: str) -> dict[str, list[float]]:
            samples: dict[str, list[float]] = {"health": [], "echo": []}
            with requests_session() as http:
                for i in range(args.samples):
                    t = time.monotonic()
                    http.get(health_url, timeout=120).raise_for_status()
                    samples["health"].append((time.monotonic() - t) * 1000)
                    t = time.monotonic()
                    out = bystander.runs.create(own_vm, f"echo {i}", session_id="probe").stdout
                    samples["echo"].append((time.monotonic() - t) * 1000)
                    assert out == f"{i}\n".encode(), out
                    time.sleep(0.05)
            print(
                f"{label:<10}"
                + "".join(
                    f"  {op} p50 {percentile(ms, 0.5):7.1f} ms p99 {percentile(ms, 0.99):7.1f} ms"
                    for op, ms in samples.items()
                )
            )
            return samples

        solo = measure("solo")
        stop = threading.Event()
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def greedy(index: int) -> None:
            client = Arker(
                server.api_key, base_url=server.base_url, control_url=server.control_url,
                max_retries=0,
            )  # fmt: skip
            vm = greedy_vms[index % len(greedy_vms)]
            while not stop.is_set():
                try:
                    client.runs.create(vm, f"sleep {args.sleep}", session_id=f"g{index}")
                    kind = "ok"
                except QuotaExceededError as exc:
                    kind = "429 quota_exceeded"
                    stop.wait(exc.retry_after or 1.0)
                except Exception as exc:  # counted; the load goes on
                    kind = type(exc).__name__
                    stop.wait(1.0)
                with lock:
                    outcomes[kind] += 1
            client.close()

        threads = [threading.Thread(target=greedy, args=(i,)) for i in range(args.greedy)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # every greedy run started, or refused
        saturated = measure("saturated")
        stop.set()
        for t in threads:
            t.join()
        print(f"greedy org's runs: {dict(outcomes)}")
        ratios = {op: percentile(saturated[op], 0.99) / percentile(solo[op], 0.99) for op in solo}
        print(
            "bystander p99 saturated/solo: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        )
        verdict = "PASS" if max(ratios.values()) <= 2.0 else "FAIL"
        print(f"\nVERDICT: {verdict} — the bystander's p99 within 2x of its solo figure")
        bystander.close()


@contextmanager
def requests_session() -> Iterator[requests.Session]:
    http = requests.Session()
    try:
        yield http
    finally:
        http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-ops", type=int, default=5000, help="per client")
    parser.add_argument("--max-forks", type=int, default=20, help="throwaway forks per client")
    parser.add_argument("--max-large", type=int, default=24, help="1-8 MiB files in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--shared-client", action="store_true", help="all threads share one Arker client"
    )
    parser.add_argument("--server-log", help="copy the server's stderr here at the end")
    parser.add_argument("--two-orgs", action="store_true", help="the fair-shares scenario")
    parser.add_argument("--greedy", type=int, default=45, help="greedy org's concurrent runs")
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds per greedy run")
    parser.add_argument("--samples", type=int, default=40, help="bystander samples per phase")
    args = parser.parse_args()
    if args.two_orgs:
        two_orgs(args)
        return

    stats = Stats(large_left=args.max_large)
    sdk_log = logging.getLogger("arker")
    recorder = RouteRecorder(stats)
    sdk_log.addHandler(recorder)
    sdk_log.setLevel(logging.INFO)
    sdk_log.propagate = False

    with local_server() as (server, admin):
        print(f"arker serve pid {server.pid} on {server.base_url}, log {server.log_path}")
        shared = [
            admin.vms.fork("arkuntu", name=f"shared-{i}").vm_id
            for i in range((args.clients + SHARED_GROUP - 1) // SHARED_GROUP)
        ]
        if args.shared_client:  # one client (one session and pool) for every thread
            clients = [admin] * args.clients
        else:
            clients = [
                Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
                for _ in range(args.clients)
            ]
        started = stats.started = time.monotonic()
        deadline = started + args.seconds
        workers = [
            Worker(i, c, shared[i // SHARED_GROUP], stats, deadline, args)
            for i, c in enumerate(clients)
        ]
        threads = [threading.Thread(target=w.run, name=f"client-{w.index}") for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        if not args.shared_client:
            for c in clients:
                c.close()
        for vm in shared:
            admin.vms.delete(vm)
        left = admin.vms.list(limit=100).total
        sdk_log.removeHandler(recorder)
        report(stats, elapsed, server)
        print(f"VMs left in the org after clean-up: {left}")
        if args.server_log:
            shutil.copyfile(server.log_path, args.server_log)
            print(f"server log copied to {args.server_log}")


if __name__ == "__main__":
    main()
