"""Print the runtime requirements of one image from pyproject.toml (one source of truth).

The images install dependencies, not the project: they run the source tree from /app, which keeps
``service/static/`` in place without package-data rules and leaves ``training/`` out of the
serving images (DESIGN.md, "Dependencies point down only").

    python requirements.py pyproject.toml --extra serve --drop torch --drop faiss-cpu
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    """Normalised distribution name of a PEP 508 requirement (PEP 503: case, '-', '_', '.')."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def requirements(pyproject: Path, extras: list[str], drop: list[str]) -> list[str]:
    """``[project].dependencies`` plus the given extras, without the distributions in ``drop``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    dropped = {_name(d) for d in drop}
    return [r for r in wanted if _name(r) not in dropped]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency group")
    parser.add_argument("--drop", action="append", default=[], help="installed separately")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra, args.drop)))


if __name__ == "__main__":
    main()
