"""Exit 0 when every pinned requirement in a requirements file is installed, else 1.

Lets scripts/setup.sh skip pip entirely when nothing is missing.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def pins(path: Path) -> list[tuple[str, str]]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out += pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==", 1)
            out.append((name.strip(), version.strip()))
    return out


def main(argv: list[str]) -> int:
    for name, version in pins(Path(argv[1])):
        try:
            if metadata.version(name) != version:
                return 1
        except metadata.PackageNotFoundError:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
