"""``arker run``, ``start``, ``logs``, ``cancel``: commands in a VM, in the foreground
or in the background."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING, Any

from .._exceptions import APIStatusError, ArkerError, NotImplementedByServerError
from .context import CliError, Context, route_missing
from .output import print_json
from .parsing import command

if TYPE_CHECKING:
    from .._models import RunResult
    from ..resources import RunHandle
    from .parsing import Parser

__all__ = ["command_line", "register"]

EXIT_TIMED_OUT = 124


def register(actions: argparse._SubParsersAction[Parser]) -> None:
    run = command(
        actions,
        "run",
        "run a command in a VM; its output streams through, and arker exits with its status",
        "  arker run scratch -- python3 -c 'print(2 + 2)'\n"
        "  arker run scratch --session build --timeout 600 -- 'cd src && make'",
    )
    _run_arguments(run)
    run.set_defaults(func=run_command)

    start = command(
        actions,
        "start",
        "start a command in the background and print its run id",
        "  RUN=$(arker start scratch --json -- ./train.sh | jq -r .run_id)\n"
        "  arker logs -f scratch $RUN",
    )
    _run_arguments(start)
    start.set_defaults(func=start_command)

    logs = command(
        actions,
        "logs",
        "print a run's output (-f: follow it until it ends, exiting with its status)",
        "  arker logs -f scratch 01JA2B3C4D5E6F7G8H9J0K1M2N",
    )
    logs.add_argument("vm", help="VM id or name")
    logs.add_argument("run_id", help="the run's id (from arker start)")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the run ends")
    logs.set_defaults(func=show_logs)

    cancel = command(
        actions,
        "cancel",
        "stop a run and every process it started",
        "  arker cancel scratch 01JA2B3C4D5E6F7G8H9J0K1M2N",
    )
    cancel.add_argument("vm", help="VM id or name")
    cancel.add_argument("run_id", help="the run's id")
    cancel.set_defaults(func=cancel_run)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", help="VM id or name")
    parser.add_argument(
        "--session", "-s", help="session to run in (shares cwd and environment between runs)"
    )
    parser.add_argument(
        "--timeout", "-t", type=int, metavar="SECONDS", help="kill the command after SECONDS"
    )
    parser.add_argument(
        "cmd",
        nargs="*",
        metavar="-- CMD",
        help="the command: one argument is a shell command line (pipes, &&...); "
        "several are one command and its arguments, quoted for the shell",
    )


def command_line(words: list[str]) -> str:
    """One word is a shell command line as it is; several are quoted as arguments."""
    if not words:
        raise CliError("usage", "no command given: arker run VM -- CMD...")
    return words[0] if len(words) == 1 else shlex.join(words)


def _has_no_live_runs(exc: ArkerError) -> bool:
    """The server lacks the live-run routes (an older ``arker serve``)."""
    return (
        route_missing(exc)
        or isinstance(exc, NotImplementedByServerError)
        or (isinstance(exc, APIStatusError) and exc.status == 405)
    )


def run_command(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = ctx.vm_id(args.vm)
    command = command_line(args.cmd)
    if ctx.json:
        result = _run_to_end(ctx, vm_id, command, args)
        print_json(_result_json(result))
        return result.exit_code
    try:
        handle = ctx.client.runs.start(
            vm_id, command, session_id=args.session, timeout=args.timeout
        )
    except ArkerError as exc:
        if not _has_no_live_runs(exc):
            raise
        # No live runs on this server: one request, its output once it has ended.
        result = _run_to_end(ctx, vm_id, command, args, live=False)
        _write(sys.stdout.buffer, result.stdout)
        _write(sys.stderr.buffer, result.stderr)
        return _exit_status(ctx, result)
    return _follow(ctx, handle)


def _run_to_end(
    ctx: Context, vm_id: str, command: str, args: argparse.Namespace, live: bool = True
) -> RunResult:
    session: str | int = args.session if args.session is not None else 0
    runs = ctx.client.runs
    if live:
        try:
            return runs.create(
                vm_id, command, session_id=session, timeout=args.timeout, on_stdout=_discard
            )
        except ArkerError as exc:
            if not _has_no_live_runs(exc):
                raise
    return runs.create(vm_id, command, session_id=session, timeout=args.timeout)


def _discard(_: bytes) -> None:
    """A callback, so `runs.create` runs on the live route (cancelled on Ctrl-C)."""


def _follow(ctx: Context, handle: RunHandle) -> int:
    """Pass the run's output through as it arrives; its exit status once it ends.
    Interrupted, it cancels the run: nothing keeps running behind a foreground run."""
    try:
        for chunk in handle.stream():
            _write(sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer, chunk.data)
        result = handle.wait()
    except KeyboardInterrupt:
        try:
            handle.cancel()
        except ArkerError as exc:
            ctx.note(f"arker: could not cancel run {handle.run_id}: {exc}")
        raise
    return _exit_status(ctx, result)


def _write(stream: Any, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def _exit_status(ctx: Context, result: RunResult) -> int:
    if result.timed_out:
        ctx.note(f"arker: the command timed out (exit status {result.exit_code})")
    return result.exit_code


def _result_json(result: RunResult) -> dict[str, Any]:
    data: dict[str, Any] = result.model_dump(mode="json")
    # Base64 in `stdout`/`stderr` keeps any bytes; the text forms are for jq.
    data["stdout_text"] = result.stdout_text
    data["stderr_text"] = result.stderr_text
    return data


def start_command(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = ctx.vm_id(args.vm)
    handle = ctx.client.runs.start(
        vm_id, command_line(args.cmd), session_id=args.session, timeout=args.timeout
    )
    if ctx.json:
        print_json(
            {"run_id": handle.run_id, "vm_id": handle.vm_id, "session_id": handle.session_id}
        )
    else:
        ctx.out(handle.run_id)
        ctx.note(f"follow it: arker logs -f {args.vm} {handle.run_id}")
    return 0


def show_logs(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = ctx.vm_id(args.vm)
    runs = ctx.client.runs
    if args.follow and not ctx.json:
        return _follow(ctx, runs.attach(vm_id, args.run_id))
    if args.follow:
        runs.attach(vm_id, args.run_id).wait()
    status = runs.get(vm_id, args.run_id)
    if ctx.json:
        data: dict[str, Any] = status.model_dump(mode="json")
        data["stdout_text"] = status.stdout.decode("utf-8", "replace")
        data["stderr_text"] = status.stderr.decode("utf-8", "replace")
        print_json(data)
    else:
        _write(sys.stdout.buffer, status.stdout)
        _write(sys.stderr.buffer, status.stderr)
    return 0


def cancel_run(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = ctx.vm_id(args.vm)
    cancelled = ctx.client.runs.cancel(vm_id, args.run_id)
    if ctx.json:
        print_json({"run_id": args.run_id, "cancelled": cancelled})
    elif cancelled:
        ctx.out(f"cancelled {args.run_id}")
    else:
        ctx.out(f"{args.run_id} had already ended")
    return 0
