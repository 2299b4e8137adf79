"""DuckLake as a SQLAlchemy dialect, so the SQL warehouse (`sink.writer`) writes to it unchanged.

    ducklake:///var/lib/outboxkit/lake.ducklake              catalog in a DuckDB file (one process)
    ducklake+postgresql://user:pw@host:5432/db?data_path=/mnt/lake   catalog in PostgreSQL (many)

(`&metadata_schema=` puts a PostgreSQL catalog's tables in that schema.)

DuckLake keeps a catalog of Parquet files under a data path (`?data_path=`; for a file catalog
it defaults to `<catalog>.files/` beside it). Its transactions span tables, which is what the
sink needs: a batch's rows, offsets, dead letters and column catalogue commit together. Every
committed transaction is a snapshot, the base of time travel (`sink.lakehouse`).

The extensions load from the Python packages that ship them (`duckdb-extension-ducklake`,
`-postgres-scanner`), never from the network: `INSTALL ducklake` would try to download.
DuckDB lets a process attach a catalog file once, so all connections to a lake in a process are
cursors of one DuckDB instance that attached it; each opens its own transactions.
"""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import duckdb
from duckdb_engine import ConnectionWrapper
from duckdb_engine import Dialect as DuckDBDialect
from sqlalchemy import URL
from sqlalchemy.engine.interfaces import DBAPIConnection

from runtime.urls import CONNECT_TIMEOUT_SECONDS

CATALOG = "lake"  # the name the catalog is attached under; `USE lake` on every connection
CATALOG_CREDENTIALS = (
    "outboxkit_lake_catalog"  # the in-memory DuckDB secret a PostgreSQL catalog connects with
)
EXTENSIONS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
}


class DuckLakeError(ValueError):
    """A DuckLake URL that cannot work: says which part and what to write instead."""


@dataclass(frozen=True)
class Attachment:
    """Where a DuckLake's catalog and data live, as DuckDB's ATTACH takes them."""

    catalog: str  # the ATTACH target after 'ducklake:' (a file path, or 'postgres:<libpq options>')
    data_path: str
    extensions: tuple[str, ...]
    metadata_schema: str | None = None  # a PostgreSQL catalog's schema (default: the server's)
    # A PostgreSQL catalog's server and credentials, as a DuckDB secret: in the ATTACH target they
    # would be quoted whole in every error DuckDB raises about the catalog, password and all.
    secret: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def statements(self) -> list[str]:
        """What a new DuckDB instance runs to open the lake: LOAD each extension by path, ATTACH."""
        loads = [f"LOAD {_literal(str(extension_path(name)))}" for name in self.extensions]
        if self.secret:
            fields = ", ".join(f"{key} {_literal(value)}" for key, value in self.secret)
            loads.append(f"CREATE SECRET {CATALOG_CREDENTIALS} (TYPE postgres, {fields})")
        options = f"DATA_PATH {_literal(self.data_path)}"
        if self.metadata_schema is not None:
            options += f", METADATA_SCHEMA {_literal(self.metadata_schema)}"
        if self.secret:
            options += f", METADATA_PARAMETERS MAP {{'SECRET': {_literal(CATALOG_CREDENTIALS)}}}"
        attach = f"ATTACH {_literal('ducklake:' + self.catalog)} AS {CATALOG} ({options})"
        return [*loads, attach]


def attachment(url: URL) -> Attachment:
    """The catalog and data path a `ducklake` URL names, or a `DuckLakeError` saying what to fix."""
    query = dict(url.query)
    data_path, schema = _single(query.pop("data_path", None)), _single(query.pop("metadata_schema", None))
    if url.drivername == "ducklake":
        if not url.database:
            raise DuckLakeError("ducklake URL: name the catalog file, e.g. ducklake:///var/lib/lake.ducklake")
        catalog = str(Path(url.database).absolute())
        return Attachment(catalog, _directory(data_path or f"{catalog}.files"), ("ducklake",))
    if url.drivername == "ducklake+postgresql":
        if data_path is None:
            raise DuckLakeError(
                "ducklake+postgresql URL: add ?data_path=/shared/dir (where every sink writes its Parquet "
                "files: a volume all of them mount)"
            )
        return Attachment(
            "postgres:" + conninfo(url, query),
            _directory(data_path),
            ("ducklake", "postgres_scanner"),
            metadata_schema=schema,
            secret=server_secret(url),
        )
    raise DuckLakeError(f"{url.drivername!r}: use ducklake:///catalog-file or ducklake+postgresql://...")


def conninfo(url: URL, options: Mapping[str, Any]) -> str:
    """libpq's key=value form of the URL's options (what DuckDB's postgres extension takes), with
    the processes' bounded connect unless the URL sets its own (see `runtime.urls`)."""
    pairs = {
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
        **{key: str(value) for key, value in options.items()},
    }
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in pairs.items())


def server_secret(url: URL) -> tuple[tuple[str, str], ...]:
    """The URL's server and credentials as a DuckDB postgres secret's fields."""
    given = {
        "HOST": url.host,
        "PORT": url.port,
        "DATABASE": url.database,
        "USER": url.username,
        "PASSWORD": url.password,
    }
    return tuple((key, str(value)) for key, value in given.items() if value is not None)


def extension_path(name: str) -> Path:
    """The extension file `name` of the running DuckDB's version, from its Python package."""
    package = EXTENSIONS[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise DuckLakeError(
            f"DuckLake needs the {package.replace('_', '-')} package of DuckDB {duckdb.__version__}: "
            "pip install 'outboxkit[ducklake]'"
        ) from None
    path = Path(str(root)) / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        shipped = sorted(p.name for p in (Path(str(root)) / "extensions").glob("v*"))
        raise DuckLakeError(
            f"{package} ships the extension for DuckDB {', '.join(shipped) or 'no version'}, not for the "
            f"installed {duckdb.__version__}: install matching versions (pip install 'outboxkit[ducklake]')"
        )
    return path


class DuckLakeDialect(DuckDBDialect):
    """duckdb_engine's dialect, connected to a DuckLake attached as the default catalog."""

    name = "ducklake"
    supports_statement_cache = False

    def create_connect_args(self, url: URL) -> tuple[tuple[()], dict[str, Any]]:
        return (), {"attachment": attachment(url)}

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        return cast(DBAPIConnection, _LakeConnection(cparams["attachment"]))


class _LakeConnection(ConnectionWrapper):
    """A cursor of the process's DuckDB instance that has the lake attached (`_open`), counted:
    the last one closed (an engine disposed) closes the instance, which frees a catalog file for
    other processes."""

    def __init__(self, lake: Attachment) -> None:
        with _OPENING:
            instance, users = _OPEN.get(lake) or (_attached(lake), 0)
            _OPEN[lake] = (instance, users + 1)
        self._lake = lake
        cursor = instance.cursor()
        cursor.execute(f"USE {CATALOG}")
        super().__init__(cursor)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        with _OPENING:
            instance, users = _OPEN.pop(self._lake)
            if users > 1:
                _OPEN[self._lake] = (instance, users - 1)
            else:
                instance.close()


_OPEN: dict[Attachment, tuple[duckdb.DuckDBPyConnection, int]] = {}  # lake -> instance, connections
_OPENING = threading.Lock()


def _attached(lake: Attachment) -> duckdb.DuckDBPyConnection:
    """A new DuckDB instance with `lake` attached. One per lake in a process: DuckDB refuses to
    attach a catalog file twice."""
    instance = duckdb.connect()
    try:
        for statement in lake.statements():
            instance.execute(statement)
    except BaseException:
        instance.close()
        raise
    return instance


def _single(value: str | tuple[str, ...] | None) -> str | None:
    if isinstance(value, tuple):
        raise DuckLakeError(f"ducklake URL: a parameter is given {len(value)} times ({', '.join(value)})")
    return value


def _directory(path: str) -> str:
    """DuckLake takes a data path as a prefix: a trailing slash makes it a directory."""
    return path if path.endswith("/") else path + "/"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    """A libpq conninfo value, quoted when it has to be (spaces, quotes, backslashes, empty)."""
    if value and not any(char in value for char in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
