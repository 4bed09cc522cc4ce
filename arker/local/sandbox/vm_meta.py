"""A VM's chain metadata (``vms/<vm>.json``) and the rule for VM ids.

The layer store (layers.py) writes and reads it; the engine and its helpers pass it
around.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import SandboxError

__all__ = ["VmMeta", "check_vm_id"]

_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_vm_id(vm_id: str) -> None:
    """Reject ids that could not be used safely as file names."""
    if not isinstance(vm_id, str) or not _VM_ID.match(vm_id):
        raise SandboxError("bad_request", f"invalid vm id: {vm_id!r}")


@dataclass
class VmMeta:
    """Chain metadata of one VM.

    Attributes:
        vm_id: The VM id.
        base: Base image name (``host`` or ``debian``).
        layers: Frozen layer ids, bottom first.
        upper: Id of the VM's private writable upper.
        is_base: True for a public base image VM (never garbage-collected).
        fork_point: The frozen layers it was forked onto (its parent's view as of the
            fork, bottom first); None for a base image and VMs forked before it was
            recorded. Its own writes are in the layers above them and its upper.
    """

    vm_id: str
    base: str
    layers: list[str] = field(default_factory=list)
    upper: str = ""
    is_base: bool = False
    fork_point: list[str] | None = None

    def to_json(self) -> bytes:
        """Serialize for the metadata file."""
        return json.dumps(
            {
                "v": 1,
                "vm_id": self.vm_id,
                "base": self.base,
                "layers": self.layers,
                "upper": self.upper,
                "is_base": self.is_base,
                **({} if self.fork_point is None else {"fork_point": self.fork_point}),
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VmMeta:
        """Parse a metadata file."""
        d = json.loads(raw)
        return cls(
            vm_id=str(d["vm_id"]),
            base=str(d["base"]),
            layers=[str(x) for x in d["layers"]],
            upper=str(d["upper"]),
            is_base=bool(d.get("is_base", False)),
            fork_point=None if d.get("fork_point") is None else [str(x) for x in d["fork_point"]],
        )
