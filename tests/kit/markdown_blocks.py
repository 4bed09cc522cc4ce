"""The fenced code blocks of a markdown page, with the marks that keep one from running.

A block is marked as not run by an HTML comment on the line just before its opening
fence (blank lines between are allowed), which the rendered page does not show:

    <!-- not run by tests/docs: needs the hosted platform -->
    ```python
    ...
    ```

The reason is required. Fences indented under a list item, an admonition or a content tab
(``=== "Tab"``) are found too; their indentation is removed from the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARK = re.compile(r"^\s*<!--\s*not run by tests/docs:\s*(?P<reason>.*?)\s*-->\s*$")
PYTHON = frozenset({"python", "py", "python3"})


@dataclass(frozen=True)
class Block:
    """One fenced block: where its code starts, its language, and why it is not run."""

    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    skip_reason: str | None

    @property
    def is_python(self) -> bool:
        return self.lang in PYTHON


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of the markdown file at ``path``, in order.

    Raises:
        ValueError: A fence is never closed, or a mark has no reason.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = opening["info"].strip().split(" ", 1)[0].split("{", 1)[0].lower()
        start = i + 1
        end = start
        while end < len(lines) and not _closes(lines[end], indent, fence):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: fence never closed")
        code = "\n".join(_dedent(line, indent) for line in lines[start:end]) + "\n"
        blocks.append(Block(start + 1, lang, code, _skip_reason(path, lines, i)))
        i = end + 1
    return blocks


def _closes(line: str, indent: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        line.startswith(indent)
        and stripped.startswith(fence[0] * len(fence))
        and set(stripped) == {fence[0]}
    )


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def _skip_reason(path: Path, lines: list[str], fence_at: int) -> str | None:
    j = fence_at - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return None
    mark = _MARK.match(lines[j])
    if mark is None:
        return None
    if not mark["reason"]:
        raise ValueError(f"{path}:{j + 1}: a 'not run by tests/docs' mark needs a reason")
    return mark["reason"]
