"""Resource classes: ``client.vms``, ``client.runs``, ``client.sessions``, ``client.sync``."""

from .runs import RunHandle, RunsResource
from .sessions import SessionsResource
from .sync import SyncResource
from .vms import VmsResource

__all__ = ["RunHandle", "RunsResource", "SessionsResource", "SyncResource", "VmsResource"]
