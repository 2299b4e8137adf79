"""The packages' dependency rules hold when the code runs, and the import-linter contracts that
state them catch a forbidden import — each contract is shown broken by one planted import.

`wire` is what any consumer of outboxkit topics needs: it must load nothing but the standard
library. The sink and the checker must not load the app-side library (SQLAlchemy's ORM mixin,
the app's settings), or a process that never touches the app's database pays for it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


def test_the_wire_contract_names_every_package_outboxkit_depends_on() -> None:
    """The contract lists packages (import-linter cannot say "standard library only"): each one a
    declared dependency brings must be on the list, or wire could start importing it unnoticed.
    Only declared ones: a fresh install may resolve a new transitive package any day, and wire
    importing one of those is caught anyway by the importtime test above (importing `wire` loads
    every module of it)."""
    ours = PYPROJECT["project"]["name"]
    declared = {
        re.split(r"[\[<>=~! ;]", requirement, maxsplit=1)[0].lower()
        for requirement in [
            *PYPROJECT["project"]["dependencies"],
            *(r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra),
        ]
    } - {ours}  # an extra may include another of ours: `outboxkit[otlp]`
    modules = {
        name
        for name, distributions in importlib.metadata.packages_distributions().items()
        if name.isidentifier()
        and name not in sys.stdlib_module_names
        and any(distribution.lower().replace("_", "-") in declared for distribution in distributions)
    }
    assert modules, "no declared dependency is installed: the check would prove nothing"
    assert modules - set(CONTRACTS[WIRE_CONTRACT]["forbidden_modules"]) == set()


@pytest.mark.parametrize("package", ["sink", "verify"])
def test_the_sink_and_the_checker_load_nothing_of_the_app_side_library(package: str) -> None:
    loaded = _loaded_by(f"import {package}")
    assert f"{package}.settings" in loaded
    assert {name for name in loaded if name.split(".")[0] == "outbox"} == set()
    assert "sqlalchemy.orm" not in loaded  # the app's ORM mixin and sessions: SQLAlchemy Core suffices


def test_the_relay_command_loads_nothing_of_the_sink_or_its_drivers() -> None:
    """The `outboxkit` command imports a command's process only when it runs (its parser is all
    the others contribute), so `outboxkit relay run` carries no DuckDB, orjson, sink or Dramatiq."""
    loaded = _loaded_by(
        "import outboxkit.cli\noutboxkit.cli._parser().parse_args(['relay', 'run'])\nimport relay"
    )
    assert "relay.run" in loaded
    assert {name.split(".")[0] for name in loaded} & {
        "sink",
        "verify",
        "jobs",
        "dramatiq",
        "pika",
        "duckdb",
        "duckdb_engine",
        "orjson",
    } == set()


def test_a_sink_writing_to_postgresql_loads_no_duckdb() -> None:
    """`outboxkit[sink]` alone runs a sink on a PostgreSQL warehouse: only a DuckDB warehouse
    imports DuckDB's driver."""
    loaded = _loaded_by(
        "import sink.run\nimport sink.loaders\nsink.loaders.loader_for('postgresql', 'psycopg')"
    )
    assert "sink.run" in loaded
    assert {name.split(".")[0] for name in loaded} & {"duckdb", "duckdb_engine"} == set()


def test_the_app_library_loads_none_of_the_processes_dependencies() -> None:
    """`pip install outboxkit` brings no Kafka client, DuckDB, orjson or psycopg: `import outbox` must
    not need them (psycopg only once a PostgreSQL app's first write wakes the relay). Nor Dramatiq
    (`outboxkit[dramatiq]`): only an app that imports `outbox.jobs` enqueues jobs."""
    loaded = _loaded_by("import outbox")
    assert "outbox.mixin" in loaded
    processes = {"runtime", "confluent_kafka", "duckdb", "orjson", "psycopg", "opentelemetry.sdk", "dramatiq"}
    assert {name for name in loaded if name in processes or name.split(".")[0] in processes} == set()


# One import each contract forbids, planted in a copy of the code: (module, line).
PLANTS = {
    "The app-side library knows nothing of the processes": ("outbox/ids.py", "import runtime.backoff"),
    "Relay, sink and jobs never import each other (they share wire and runtime)": (
        "sink/merge.py",
        "import relay.stats",
    ),
    "Only the composition root imports everything": ("verify/checks.py", "import outboxkit.writers"),
    "The sink and the checker never load the app-side library": ("sink/merge.py", "import outbox.ids"),
    "The checker is independent of what it checks (it shares only wire and runtime)": (
        "verify/checks.py",
        "import sink.merge",
    ),
    "The relay loads nothing of the sink or DuckDB": ("relay/stats.py", "import duckdb"),
    "The processes' shared plumbing depends on none of its users": (
        "runtime/backoff.py",
        "import relay.stats",
    ),
    WIRE_CONTRACT: ("wire/keys.py", "import pydantic"),
    "The sink's pure modules never touch Kafka's client": (
        "sink/merge.py",
        "import sink.partitions",  # indirectly: partitions talks to Kafka
    ),
    "The jobs' worker side (the app's own worker processes) loads no Kafka client and no process plumbing": (
        "jobs/inbox.py",
        "import runtime.backoff",
    ),
    "The relay's loop never imports what composes it (relay.run above relay.service)": (
        "relay/service.py",
        "import relay.run",
    ),
}


def test_every_contract_has_a_planted_import() -> None:
    assert set(PLANTS) == set(CONTRACTS)


def _lint_copy(tmp_path: Path, plant: tuple[str, str] | None) -> str:
    """import-linter's report on a copy of the packages (and of pyproject.toml, whose contracts it
    checks), with `plant` appended to one module: the checkout itself stays untouched."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PYPROJECT["tool"]["importlinter"]["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    if plant is not None:
        module, line = plant
        with (tmp_path / module).open("a") as source:
            source.write(f"\n{line}  # planted by the test\n")
    done = subprocess.run(
        [Path(sys.executable).with_name("lint-imports"), "--no-cache", "pyproject.toml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path), "COLUMNS": "250"},  # no wrapped contract names
    )
    return done.stdout + done.stderr


def test_the_copy_keeps_every_contract(tmp_path: Path) -> None:
    assert f"{len(CONTRACTS)} kept, 0 broken" in _lint_copy(tmp_path, None)


@pytest.mark.parametrize("contract", sorted(PLANTS))
def test_a_planted_import_breaks_the_contract(tmp_path: Path, contract: str) -> None:
    report = _lint_copy(tmp_path, PLANTS[contract])
    assert f"{contract} BROKEN" in report
    planted_in = PLANTS[contract][0].removesuffix(".py").replace("/", ".")
    assert planted_in in report  # the chain import-linter shows starts at the planted import
