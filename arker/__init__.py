"""Arker: Python SDK for Arker virtual computers.

```python
from arker import Arker

client = Arker()  # ARKER_API_KEY, ARKER_BASE_URL, ARKER_CONTROL_URL
with client.vm("arkuntu").fork(name="hello") as vm:
    print(vm.run("python3 -c 'print(2+2)'").stdout_text)
```
"""

from ._client import Arker
from ._computer import Computer, Sync
from ._config import Timeout
from ._constants import ARKUNTU_ID
from ._diff_models import DiffEntry, ForkDiff
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ArkerError,
    AuthenticationError,
    BadRequestError,
    CommandNotFoundError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    NotImplementedByServerError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    PaymentRequiredError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ResponseValidationError,
    RunCancelledError,
    RunError,
    RunFailedError,
    ServiceUnavailableError,
    UnsupportedError,
    VmBusyError,
)
from ._models import (
    DirSyncResult,
    ExposedPort,
    ForkResult,
    OutputChunk,
    RunResult,
    RunStatus,
    RunSummary,
    Session,
    VmDetails,
    VmList,
    VmSummary,
)
from ._retry import RetryPolicy
from ._version import __version__
from .resources import RunHandle

__all__ = [
    "ARKUNTU_ID",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Arker",
    "ArkerError",
    "AuthenticationError",
    "BadRequestError",
    "CommandNotFoundError",
    "Computer",
    "ConfigurationError",
    "ConflictError",
    "DiffEntry",
    "DirSyncResult",
    "ExposedPort",
    "ForkDiff",
    "ForkResult",
    "InternalServerError",
    "NotFoundError",
    "NotImplementedByServerError",
    "OutcomeUnknownError",
    "OutputChunk",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ResponseValidationError",
    "RetryPolicy",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunHandle",
    "RunResult",
    "RunStatus",
    "RunSummary",
    "ServiceUnavailableError",
    "Session",
    "Sync",
    "Timeout",
    "UnsupportedError",
    "VmBusyError",
    "VmDetails",
    "VmList",
    "VmSummary",
    "__version__",
]
