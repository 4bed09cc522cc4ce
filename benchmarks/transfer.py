"""File transfer throughput and client memory: this SDK vs 0.1.0's approach vs curl.

Starts its own `arker serve` (root + bubblewrap + curl) and, in one run against that
one server, writes and reads 1 MiB, 8 MiB and 100 MiB files with:

* ``sdk-path``: ``client.sync.write(vm, path, Path(...))`` / ``client.sync.read_to(vm,
  path, Path(...))`` — streamed, hashed, atomic;
* ``sdk-durable`` (reads only): ``read_to(..., durable=True)``, which also fsyncs the
  file and its directory (curl does not);
* ``sdk-bytes``: ``client.sync.write(vm, path, data)`` / ``client.sync.read(vm, path)``;
* ``v0.1.0``: the published 0.1.0 client (``pip install --target`` of ``arker==0.1.0``
  into the run's temporary directory): the whole payload in memory, urllib, a connection
  per call;
* ``curl``: ``curl`` against the same presigned URLs, the floor. A write asks for a
  presigned URL, PUTs with curl (timed) and commits (not timed); a read of a file small
  enough to come back inline has no presigned URL, so curl POSTs the same JSON read the
  SDK sends (``curl(api)``).

Each measurement runs in a fresh worker process so its peak RSS is its own: "RSS+" is
the worker's peak resident memory minus its resident memory just before the transfer
(so the payload a ``bytes`` variant already holds is not counted). Prints MB/s, the
ratio to curl's MB/s and RSS growth; it does not assert::

    python benchmarks/transfer.py [--sizes 1,8,100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
HERE = Path(__file__).resolve().parent
REFERENCE_ENV = "ARKER_BENCH_REFERENCE"  # where main() installed the 0.1.0 client
VARIANTS = ("sdk-path", "sdk-durable", "sdk-bytes", "v0.1.0", "curl")
WRITERS = tuple(v for v in VARIANTS if v != "sdk-durable")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _install_reference(into: Path) -> Path:
    """Install the published ``arker==0.1.0`` (no dependencies) under ``into``."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--target", str(into), "arker==0.1.0"], check=True)
    return into / "arker" / "computer.py"


def _load_reference() -> Any:
    source = os.environ.get(REFERENCE_ENV, "")
    spec = importlib.util.spec_from_file_location("arker_reference_0_1_0", source)
    if not source or spec is None or spec.loader is None:
        raise SystemExit(f"0.1.0 reference client not installed (${REFERENCE_ENV}={source!r})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def worker(args: argparse.Namespace) -> None:
    """One transfer in this process; prints {"seconds", "rss_growth"} as JSON."""
    from arker import Arker

    env = os.environ
    remote, local = args.remote, Path(args.local)
    prepare: Callable[[], Any] = lambda: None  # noqa: E731
    if args.variant in ("sdk-path", "sdk-durable"):
        client = Arker()
        durable = args.variant == "sdk-durable"
        op = (
            (lambda _: client.sync.write(args.vm, remote, local))
            if args.op == "write"
            else (lambda _: client.sync.read_to(args.vm, remote, local, durable=durable))
        )
    elif args.variant == "sdk-bytes":
        client = Arker()
        if args.op == "write":
            prepare = local.read_bytes
            op = lambda data: client.sync.write(args.vm, remote, data)  # noqa: E731
        else:
            op = lambda _: client.sync.read(args.vm, remote)  # noqa: E731
    else:
        ref = _load_reference()
        vm = ref.Arker(env["ARKER_API_KEY"], base_url=env["ARKER_BASE_URL"]).vm(args.vm)
        if args.op == "write":
            prepare = local.read_bytes
            op = lambda data: vm.sync.write_file(remote, data)  # noqa: E731
        else:
            op = lambda _: vm.sync.read_file(remote)  # noqa: E731
    held = prepare()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    result = op(held)
    seconds = time.perf_counter() - started
    growth = (_status_kib("VmHWM") - before) * 1024
    if args.op == "read" and args.variant not in ("sdk-path", "sdk-durable"):
        digest = hashlib.sha256(result).hexdigest()
    elif args.op == "read":
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
    else:
        digest = ""
    print(json.dumps({"seconds": seconds, "rss_growth": growth, "sha256": digest}))


def _run_worker(variant: str, op: str, vm: str, remote: str, local: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", variant, "--op", op, "--vm", vm]
    argv += ["--remote", remote, "--local", str(local)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {variant} {op} failed:\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _curl(argv: list[str]) -> tuple[float, int]:
    """Run curl; return (seconds, its peak RSS in bytes).

    The peak is polled from ``/proc/<pid>/status`` (VmHWM only grows): the kernel's
    ``ru_maxrss`` of a child counts the parent's memory it was forked from.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if (
                    line.startswith("VmHWM:")
                    and "curl" in Path(f"/proc/{proc.pid}/comm").read_text()
                ):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"curl failed: {argv[:3]}")
    return seconds, peak


def _curl_write(client: Any, vm: str, remote: str, local: Path) -> dict[str, Any]:
    from arker._wire import CommitEntry, PresignEntry
    from arker.resources._sync_route import SyncRoute

    route = SyncRoute(client)
    size = local.stat().st_size
    grant = route.write(vm, [PresignEntry(path=remote, size=size)])[0]
    seconds, rss = _curl(["curl", "-sf", "-X", "PUT", "-T", str(local), grant.presigned_url])
    commit = CommitEntry(path=remote, size=size, upload_id=grant.upload_id)
    route.write(vm, [commit])
    return {"seconds": seconds, "rss_peak": rss, "sha256": ""}


def _curl_read(client: Any, vm: str, remote: str, local: Path) -> dict[str, Any]:
    from arker._wire import SyncReadRequest, SyncReadResponse
    from arker.resources.vms import vm_path

    wire = client.call(
        "POST", vm_path(vm, "/sync"), SyncReadResponse, body=SyncReadRequest(path=remote)
    )
    if wire.presigned_url:
        argv = ["curl", "-sf", "-o", str(local), wire.presigned_url]
    else:
        body = json.dumps({"op": "read", "path": remote})
        argv = [
            "curl",
            "-sf",
            "-o",
            str(local),
            "-H",
            f"Authorization: Bearer {client._config.api_key}",
        ]
        argv += ["-H", "Content-Type: application/json", "--data-binary", body]
        argv += [f"{client.base_url}{vm_path(vm, '/sync')}"]
    seconds, rss = _curl(argv)
    return {"seconds": seconds, "rss_peak": rss, "sha256": "", "api": not wire.presigned_url}


def _curl_bytes(sample: dict[str, Any], dest: Path) -> bytes:
    """What curl fetched: raw bytes, or the inline content of a JSON read answer."""
    if not sample.get("api"):
        return dest.read_bytes()
    answer = json.loads(dest.read_bytes())
    content = answer["content"]
    return base64.b64decode(content) if answer.get("encoding") == "base64" else content.encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8,100", help="MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--op", choices=("write", "read"))
    parser.add_argument("--vm")
    parser.add_argument("--remote")
    parser.add_argument("--local")
    args = parser.parse_args()
    if args.worker:
        args.variant = args.worker
        worker(args)
        return
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed: apt-get install -y curl")
    sys.path.insert(0, str(HERE))
    from _server import local_server

    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[tuple[str, int, str, float, float, str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="arker-transfer-", dir="/var/tmp") as tmp,
        local_server("/var/tmp") as (server, client),
    ):
        os.environ[REFERENCE_ENV] = str(_install_reference(Path(tmp) / "reference"))
        os.environ.update(
            ARKER_API_KEY=server.api_key,
            ARKER_BASE_URL=server.base_url,
            ARKER_CONTROL_URL=server.control_url,
        )
        vm = client.vms.fork("arkuntu").vm_id
        for size in sizes:
            src = Path(tmp) / f"src-{size}"
            with src.open("wb") as f:
                for _ in range(size):
                    f.write(os.urandom(MiB))
            want = hashlib.sha256(src.read_bytes()).hexdigest()
            for op in ("write", "read"):
                for variant in WRITERS if op == "write" else VARIANTS:
                    samples: list[dict[str, Any]] = []
                    for i in range(args.repeat):
                        remote = f"/home/user/{variant}-{size}-{i}.bin"
                        dest = Path(tmp) / f"dest-{variant}-{size}"
                        if op == "read":  # read back what the SDK wrote
                            remote = f"/home/user/sdk-path-{size}-{i}.bin"
                        local = src if op == "write" else dest
                        if variant == "curl":
                            run = _curl_write if op == "write" else _curl_read
                            sample = run(client, vm, remote, local)
                            if op == "read":
                                sample["sha256"] = hashlib.sha256(
                                    _curl_bytes(sample, dest)
                                ).hexdigest()
                        else:
                            sample = _run_worker(variant, op, vm, remote, local)
                        if op == "read" and sample["sha256"] != want:
                            raise SystemExit(f"{variant} read {size} MiB: sha256 mismatch")
                        samples.append(sample)
                        dest.unlink(missing_ok=True)
                    seconds = statistics.median(s["seconds"] for s in samples)
                    if variant == "curl":
                        mem = f"peak {statistics.median(s['rss_peak'] for s in samples) / MiB:.1f}"
                        name = "curl(api)" if samples[0].get("api") else "curl"
                    else:
                        mem = f"+{statistics.median(s['rss_growth'] for s in samples) / MiB:.1f}"
                        name = variant
                    rows.append((op, size, name, seconds, size * MiB / seconds / 1e6, mem))
            # The written copies are checked against the source, through the SDK.
            for variant in WRITERS:
                got = client.sync.read(vm, f"/home/user/{variant}-{size}-0.bin")
                if hashlib.sha256(got).hexdigest() != want:
                    raise SystemExit(f"{variant} wrote a wrong {size} MiB file")
    print(f"{'op':<6}{'MiB':>5}  {'variant':<12}{'seconds':>9}{'MB/s':>9}{'x curl':>8}  RSS MiB")
    floor = {(op, size): mbps for op, size, name, _, mbps, _ in rows if name.startswith("curl")}
    for op, size, name, seconds, mbps, mem in rows:
        ratio = mbps / floor[(op, size)]
        print(f"{op:<6}{size:>5}  {name:<12}{seconds:>9.3f}{mbps:>9.1f}{ratio:>8.2f}  {mem}")
    print("x curl: this variant's MB/s divided by curl's (1.00 = as fast as the floor)")


if __name__ == "__main__":
    main()
