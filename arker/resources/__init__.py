"""Resource classes: ``client.vms``, ``client.runs``, ``client.sync``."""

from .runs import RunsResource
from .sync import SyncResource
from .vms import VmsResource

__all__ = ["RunsResource", "SyncResource", "VmsResource"]
