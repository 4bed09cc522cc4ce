"""Print one of the README's two fresh-machine commands, so CI runs them verbatim.

Usage: ``python3 .ci/readme_command.py demo|tests``. Each command is the ``bash`` fenced
block that follows an ``<!-- ci: NAME -->`` marker in README.md; a missing marker or
block is an error, so the README and CI cannot drift apart silently.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def command(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    pattern = rf"<!-- ci: {re.escape(name)} -->\s*```bash\n(.*?)\n```"
    found = re.search(pattern, text, flags=re.DOTALL)
    if found is None:
        raise SystemExit(f"README.md has no bash block after '<!-- ci: {name} -->'")
    return found.group(1).strip()


if __name__ == "__main__":
    print(command(sys.argv[1]))
