"""The packages' dependency rules hold when the code runs, and the import-linter contracts that
state them catch a forbidden import — each contract is shown broken by one planted import.

`wire` is what any consumer of outboxkit topics needs: it must load nothing but the standard
library. The sink and the checker must not load the app-side library (SQLAlchemy's ORM mixin,
the app's settings), or a process that never touches the app's database pays for it.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = {contract["name"]: contract for contract in PYPROJECT["tool"]["importlinter"]["contracts"]}
WIRE_CONTRACT = "The wire contract is standard library only, also indirectly"


def _loaded_by(statement: str) -> set[str]:
    """The modules `python -X importtime -c statement` imports in a fresh interpreter, beyond
    what the interpreter's start-up imports anyway (site, the editable install's finder)."""
    return _importtime(statement) - _importtime("pass")


def _importtime(statement: str) -> set[str]:
    """The modules importtime reports that are still loaded at the end: it also reports failed
    attempts, such as `copy`'s probe for Jython's `org.python.core`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{statement}\nimport sys\nprint(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    rows = [line.rpartition("|")[2] for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {row.strip() for row in rows[1:]} & set(done.stdout.split())  # rows[0] is the header


def test_importing_wire_loads_the_standard_library_only() -> None:
    loaded = _loaded_by("import wire")
    assert "wire.envelope" in loaded  # the measurement sees the package's own modules
    outside = {name for name in loaded if name.split(".")[0] not in {*sys.stdlib_module_names, "wire"}}
    assert outside == set()


def test_the_wire_contract_names_every_installed_third_party_package() -> None:
    """The contract lists packages (import-linter cannot say "standard library only"): a newly
    installed one must join the list, or wire could start importing it unnoticed."""
    installed = {
        name
        for name in importlib.metadata.packages_distributions()
        if name.isidentifier() and name not in sys.stdlib_module_names and name != "wire"
    }
    assert installed - set(CONTRACTS[WIRE_CONTRACT]["forbidden_modules"]) == set()
