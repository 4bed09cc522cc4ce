"""Ready-made terminal progress bars for transfers (optional dependency: ``tqdm``).

```python
from arker.progress import progress_bar

with progress_bar("upload data.parquet") as bar:
    client.sync.write(vm_id, "/home/user/data.parquet", Path("data.parquet"), progress=bar)
```

``tqdm`` is imported only when a bar is made: install it with ``pip install 'arker[progress]'``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ._exceptions import ConfigurationError

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar:
    """A progress callback that drives a ``tqdm`` bar; use it as a context manager."""

    def __init__(self, description: str, **tqdm_options: Any) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ConfigurationError(
                "progress bars need tqdm: pip install 'arker[progress]'"
            ) from None
        self._bar = tqdm(
            desc=description, unit="B", unit_scale=True, unit_divisor=1024, **tqdm_options
        )

    def __call__(self, done: int, total: int) -> None:
        if total and self._bar.total != total:
            self._bar.total = total
        # `done` may go back when a transfer restarts; tqdm wants the delta.
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress_bar(description: str = "", **tqdm_options: Any) -> ProgressBar:
    """A terminal progress bar to pass as ``progress=`` to sync reads and writes.

    Args:
        description: Text shown before the bar.
        **tqdm_options: Passed to ``tqdm`` (e.g. ``disable=True``, ``file=sys.stdout``).

    Raises:
        ConfigurationError: ``tqdm`` is not installed.
    """
    return ProgressBar(description, **tqdm_options)
