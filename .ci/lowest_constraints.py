"""Print pip constraints that pin every direct dependency of pyproject.toml to the lowest version it allows.

Usage: python .ci/lowest_constraints.py [EXTRA ...] > constraints.txt

Covers the core dependencies and those of the given extras (following `ovis-u1-hf[...]` references). Each requirement
must state its lowest version (`>=`, `==` or `~=`): a dependency without one has no version that CI's oldest leg could
test, which is an error.
"""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def lowest_constraints(pyproject: dict, extras: list[str]) -> dict[str, str]:
    project = pyproject["project"]
    own_name = canonicalize_name(project["name"])
    requirements = [Requirement(line) for line in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in project.get("optional-dependencies", {}):
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        for line in project["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == own_name:
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)

    pins = {}
    for requirement in requirements:
        lowest = [s.version for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        if len(lowest) != 1:
            raise SystemExit(f"pyproject.toml: {requirement} must state exactly one lowest version (>=, == or ~=)")
        name = canonicalize_name(requirement.name)
        if pins.get(name, lowest[0]) != lowest[0]:
            raise SystemExit(f"pyproject.toml: {name} has two lowest versions, {pins[name]} and {lowest[0]}")
        pins[name] = lowest[0]
    return pins


if __name__ == "__main__":
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    for name, version in sorted(lowest_constraints(pyproject, sys.argv[1:]).items()):
        print(f"{name}=={version}")
