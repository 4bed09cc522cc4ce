"""``arker ls``, ``fork``, ``rm``, ``diff``: VMs themselves."""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import itertools
from typing import TYPE_CHECKING, Any

from .._exceptions import ArkerError
from .._wire import SORT_KEYS
from .context import CliError, Context
from .output import error_line, human_size, print_json, relative_time, table
from .parsing import command

if TYPE_CHECKING:
    from .parsing import Parser

__all__ = ["diff_lines", "register"]


def register(actions: argparse._SubParsersAction[Parser]) -> None:
    ls = command(
        actions,
        "ls",
        "list your VMs, newest first",
        "  arker ls --name test --sort created_at --limit 10\n"
        "  arker ls --json | jq -r '.[].vm_id'",
    )
    ls.add_argument("--name", "-q", metavar="TEXT", help="only VMs whose name contains TEXT")
    ls.add_argument("--sort", choices=SORT_KEYS, help="order (default: -created_at, newest first)")
    ls.add_argument(
        "--limit", "-n", type=_positive, default=50, help="show at most N VMs (default: 50)"
    )
    ls.set_defaults(func=list_vms)

    fork = command(
        actions,
        "fork",
        "fork a VM or image into a new VM, and print it",
        "  arker fork arkuntu --name scratch --ttl 3600\n"
        "  VM=$(arker fork arkuntu --json | jq -r .vm_id)",
    )
    fork.add_argument("source", help="VM id, VM name or public image (arkuntu)")
    fork.add_argument("--name", help="name of the new VM")
    fork.add_argument(
        "--ttl", type=_positive, metavar="SECONDS", help="delete the new VM after SECONDS"
    )
    fork.set_defaults(func=fork_vm)

    rm = command(
        actions,
        "rm",
        "delete VMs (their forks keep working)",
        "  arker rm scratch 01J9Z3V6Q8W2X4Y5Z6A7B8C9D0\n  arker rm --name 'ci-*' --yes",
    )
    rm.add_argument("vms", nargs="*", metavar="VM", help="VM ids or names")
    rm.add_argument("--name", metavar="PATTERN", help="every VM whose name matches a glob")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask before --name deletes")
    rm.set_defaults(func=remove_vms)

    diff = command(
        actions,
        "diff",
        "what a fork changed since it was forked (like git status --short)",
        "  arker diff scratch\n  arker diff scratch --path /home/user/project --json",
    )
    diff.add_argument("vm", help="VM id or name")
    diff.add_argument("--path", default="/home/user", help="directory to compare")
    diff.set_defaults(func=diff_vm)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def list_vms(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.client.vms.list_all(q=args.name, sort=args.sort, page_size=min(args.limit, 100))
    vms = list(itertools.islice(found, args.limit))
    if ctx.json:
        print_json(vms)
        return 0
    if not vms:
        ctx.note("no VMs")
        return 0
    expiry = _has_expiry(vms)
    headers = ["ID", "NAME", "REGION", "CREATED", *(["EXPIRES"] if expiry else [])]
    rows = [
        [
            vm.vm_id,
            vm.name or "-",
            vm.region,
            relative_time(vm.created_at),
            *([relative_time(getattr(vm, "expires_at", None))] if expiry else []),
        ]
        for vm in vms
    ]
    ctx.out(table(headers, rows))
    return 0


def _has_expiry(vms: list[Any]) -> bool:
    return any(getattr(vm, "expires_at", None) is not None for vm in vms)


def fork_vm(ctx: Context, args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"name": args.name}
    if args.ttl is not None:
        if "ttl" not in inspect.signature(ctx.client.vms.fork).parameters:
            raise CliError("unsupported_operation", "this version of arker cannot set a TTL")
        options["ttl"] = args.ttl
    vm = ctx.client.vms.fork(args.source, **options)
    if ctx.json:
        print_json(vm)
    else:
        named = f" ({vm.name})" if vm.name else ""
        ctx.out(f"{vm.vm_id}{named}")
    return 0


def remove_vms(ctx: Context, args: argparse.Namespace) -> int:
    if not args.vms and args.name is None:
        raise CliError("usage", "name the VMs to delete, or give --name PATTERN")
    targets: list[tuple[str, str | None]] = [(ref, None) for ref in args.vms]
    if args.name is not None:
        matched: list[tuple[str, str | None]] = [
            (vm.vm_id, vm.name)
            for vm in ctx.client.vms.list_all(sort="created_at")
            if vm.name is not None and fnmatch.fnmatchcase(vm.name, args.name)
        ]
        if not matched:
            ctx.note(f"no VM name matches {args.name!r}")
        elif not args.yes:
            ctx.note("\n".join(f"  {vm_id}  {name}" for vm_id, name in matched))
            if not ctx.confirm(f"delete these {len(matched)} VMs?"):
                raise CliError("aborted", "nothing deleted")
        targets += matched
    deleted: list[str] = []
    failed = 0
    for ref, _ in targets:
        try:
            vm_id = ctx.vm_id(ref)
            ctx.client.vms.delete(vm_id)
        except ArkerError as exc:
            failed += 1
            ctx.note(error_line(exc.code, f"{ref}: {exc.message}"))
            continue
        deleted.append(vm_id)
        if not ctx.json:
            ctx.out(f"deleted {vm_id}")
    if ctx.json:
        print_json({"deleted": deleted})
    return 1 if failed else 0


_DIFF_MARKS = (("added", "A"), ("modified", "M"), ("deleted", "D"))


def diff_vm(ctx: Context, args: argparse.Namespace) -> int:
    vms = ctx.client.vms
    if not hasattr(vms, "diff"):
        raise CliError("unsupported_operation", "this version of arker has no fork diffs")
    changes = vms.diff(ctx.vm_id(args.vm), path=args.path)
    if ctx.json:
        print_json(changes)
        return 0
    for line in diff_lines(changes):
        ctx.out(line)
    return 0


def diff_lines(changes: Any) -> list[str]:
    """A fork diff as ``git status --short`` prints one: ``A``/``M``/``D``, two spaces,
    the path (sizes of what is there now), sorted by path."""
    lines = []
    for field, mark in _DIFF_MARKS:
        for entry in getattr(changes, field, []):
            size = getattr(entry, "size", None)
            suffix = f"  ({human_size(size)})" if size is not None and mark != "D" else ""
            lines.append((entry.path, f"{mark}  {entry.path}{suffix}"))
    return [line for _, line in sorted(lines)]
