"""Sessions: a VM's shells whose cwd and exported environment persist between commands.

Each command runs in a fresh ``/bin/sh`` that first restores its session's state from a
file inside the VM and saves it again on exit (`SESSION_WRAPPER`). The engine commits
the saved state only when it is complete (`STATE_END`) and reads the cwd back from it.
"""

from __future__ import annotations

import hashlib
import re
import shlex

from .baseimage import SESSIONS_DIR
from .errors import SandboxError

__all__ = [
    "SESSION_WRAPPER",
    "STATE_END",
    "parse_state_cwd",
    "session_name",
    "session_state_path",
]

_SESSION_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")

# Runs inside the VM as `sh -c SESSION_WRAPPER sh <state> <command>`. It restores the
# session's exported environment and cwd, evals the command in this same shell (so
# `cd`/`export` stick and `exit N` keeps N) and saves the state from an EXIT trap.
# The state goes to "<state>.new" with builtins only (no fork/exec); the engine renames
# it into place after the run when it is complete (ends with STATE_END), so a command
# killed mid-save never leaves a half-written state behind. `command .` keeps a broken
# state file from killing the shell (`.` is a special builtin).
SESSION_WRAPPER = r"""__arker_state=$1
__arker_cmd=$2
shift 2
__arker_cwd=/home/user
if [ -r "$__arker_state" ]; then
  command . "$__arker_state" 2>/dev/null
  __arker_cwd=${__ARKER_CWD:-/home/user}
  unset __ARKER_CWD
fi
cd "$__arker_cwd" 2>/dev/null || cd /home/user
__arker_save() {
  __arker_rc=$?
  trap - EXIT
  __ARKER_CWD=$PWD
  export __ARKER_CWD
  {
    export -p
    echo '# arker-state-end'
  } >"$__arker_state.new" 2>/dev/null
  exit "$__arker_rc"
}
trap __arker_save EXIT
eval "$__arker_cmd"
"""


STATE_END = b"# arker-state-end\n"


def session_state_path(safe_name: str) -> str:
    """Path (inside the VM) of a session's state file."""
    return f"{SESSIONS_DIR}/{safe_name}"


def parse_state_cwd(raw: bytes) -> str | None:
    """Extract the saved cwd from a state file written by ``export -p``."""
    text = raw.decode("utf-8", "surrogateescape")
    for prefix in ("export __ARKER_CWD=", "__ARKER_CWD="):
        idx = text.rfind("\n" + prefix)
        if idx < 0 and text.startswith(prefix):
            idx = -1
        elif idx < 0:
            continue
        value = text[idx + 1 + len(prefix) :]
        try:
            # dash/bash quote with single quotes and '\'' escapes: shlex parses both.
            parts = shlex.split(value.split("\nexport ", 1)[0], posix=True)
        except ValueError:
            return None
        return parts[0] if parts else None
    return None


def session_name(session: str) -> str:
    """The file name of a session id: itself when safe, else a hash of it.

    Raises:
        SandboxError: ``bad_request`` for an empty, NUL-bearing or over-long id.
    """
    if not isinstance(session, str) or len(session) > 256 or "\0" in session or not session:
        raise SandboxError("bad_request", "invalid session id")
    if _SESSION_SAFE.match(session):
        return session
    return "h-" + hashlib.sha256(session.encode("utf-8", "surrogateescape")).hexdigest()[:40]
