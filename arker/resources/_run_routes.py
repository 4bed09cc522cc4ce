"""The live-run routes, one request each: read a run, cancel it, read its new output.

The handle (`_run_handle`), the follower (`_run_follow`) and ``client.runs`` share them.
"""

from __future__ import annotations

from urllib.parse import quote

from .._base_client import BaseClient
from .._exceptions import refused_before_sending
from .._wire_live import CancelRunResponse, OutputQuery, Run, RunOutput
from ._resource import vm_path

__all__ = ["OUTPUT_READ_MARGIN_S", "cancel_run", "get_run", "read_output", "run_path"]

OUTPUT_READ_MARGIN_S = 15.0
"""Seconds a long poll's read may take beyond the wait it asked the server for."""


def run_path(vm_id: str, run_id: str, suffix: str = "") -> str:
    """``/api/v1/vms/<vm>/runs/<run><suffix>``, both ids percent-encoded."""
    if not run_id or not isinstance(run_id, str):
        raise refused_before_sending(f"run_id must be a non-empty string: {run_id!r}")
    return vm_path(vm_id, f"/runs/{quote(run_id, safe='')}{suffix}")


def get_run(client: BaseClient, vm_id: str, run_id: str) -> Run:
    """``GET …/runs/{run_id}``: the run and all its output so far."""
    return client.call("GET", run_path(vm_id, run_id), Run)


def cancel_run(client: BaseClient, vm_id: str, run_id: str) -> bool:
    """``DELETE …/runs/{run_id}``: whether the server cancelled it (``False``: it had
    already ended). Cancelling twice is harmless, so the request is retried freely."""
    answer = client.call("DELETE", run_path(vm_id, run_id), CancelRunResponse)
    return answer.cancelled


def read_output(client: BaseClient, vm_id: str, run_id: str, query: OutputQuery) -> RunOutput:
    """``GET …/runs/{run_id}/output`` (the extension): the bytes past the query's
    offsets, waiting up to ``query.wait`` seconds for some."""
    return client.call(
        "GET",
        run_path(vm_id, run_id, "/output"),
        RunOutput,
        params=query.params(),
        read_timeout_at_least=query.wait + OUTPUT_READ_MARGIN_S,
    )
