"""The README and the manifests name only settings that exist, and every relay setting is documented."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import make_url

from jobs.settings import JobsSettings
from outboxkit.commands.migrate import MigrateSettings
from relay import RelaySettings
from runtime.kafka import KafkaSettings
from runtime.observe import Health, Metrics, serve
from sink import SinkSettings, TableMapping
from sink.run import warehouse_url
from verify import VerifySettings

ROOT = Path(__file__).resolve().parent.parent
RELAY_PREFIX = "OUTBOXKIT_RELAY_"


def relay_setting_names() -> set[str]:
    names = {RELAY_PREFIX + name.upper() for name in RelaySettings.model_fields if name != "kafka"}
    return names | {RELAY_PREFIX + "KAFKA__BOOTSTRAP_SERVERS", RELAY_PREFIX + "KAFKA__CONFIG"}


def relay_names_in(path: Path) -> set[str]:
    return set(re.findall(r"OUTBOXKIT_RELAY_[A-Z_]+[A-Z]", path.read_text()))


def test_every_relay_setting_is_in_the_readme_table_and_nothing_else_is() -> None:
    table = {
        line.split("`")[1]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `OUTBOXKIT_RELAY_")
    }
    assert table == relay_setting_names()
    assert relay_names_in(ROOT / "README.md") <= relay_setting_names()


def test_every_sink_setting_is_in_the_readme_table_and_nothing_else_is() -> None:
    table = {
        line.split("`")[1]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `OUTBOXKIT_SINK_")
    }
    assert table == sink_setting_names() | {
        "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS",
        "OUTBOXKIT_SINK_KAFKA__CONFIG",
    }
    assert set(re.findall(r"OUTBOXKIT_SINK_[A-Z_]+[A-Z]", (ROOT / "README.md").read_text())) <= table


def test_every_verify_setting_is_in_the_readme_table_and_nothing_else_is() -> None:
    prefix = "OUTBOXKIT_VERIFY_"
    names = {prefix + name.upper() for name in VerifySettings.model_fields if name != "kafka"}
    names |= {prefix + "KAFKA__BOOTSTRAP_SERVERS", prefix + "KAFKA__CONFIG"}
    readme = (ROOT / "README.md").read_text()
    table = {line.split("`")[1] for line in readme.splitlines() if line.startswith(f"| `{prefix}")}
    assert table == names
    assert set(re.findall(rf"{prefix}[A-Z_]+[A-Z]", readme)) <= names


def names_in_k8s(pattern: str) -> set[str]:
    """The setting names matching `pattern` in the manifests and k8s/README.md."""
    files = [path for path in (ROOT / "k8s").rglob("*") if path.suffix in {".yaml", ".md"}]
    return set().union(*(re.findall(pattern, path.read_text()) for path in files))


def test_every_jobs_setting_is_in_the_readme_table_and_nothing_else_is() -> None:
    prefix = "OUTBOXKIT_JOBS_"
    table = {
        line.split("`")[1]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith(f"| `{prefix}")
    }
    names = {prefix + name.upper() for name in JobsSettings.model_fields if name != "kafka"}
    assert table == names | {prefix + "KAFKA__BOOTSTRAP_SERVERS", prefix + "KAFKA__CONFIG"}
    assert set(re.findall(rf"{prefix}[A-Z_]+[A-Z]", (ROOT / "README.md").read_text())) <= table


def test_the_manifests_use_real_relay_and_migrate_settings() -> None:
    used = names_in_k8s(r"OUTBOXKIT_RELAY_[A-Z_]+[A-Z]")
    assert RELAY_PREFIX + "DATABASE_URL" in used
    assert used <= relay_setting_names()
    migrate = {"OUTBOXKIT_MIGRATE_" + name.upper() for name in MigrateSettings.model_fields}
    assert names_in_k8s(r"OUTBOXKIT_MIGRATE_[A-Z_]+[A-Z]") == migrate


# The sink's manifest is checked more closely than the relay's: its settings are data (a
# ConfigMap, a Secret), read here with a reader for the few YAML forms the manifest uses, then
# given to SinkSettings as the container would see them.

SINK_PREFIX = "OUTBOXKIT_SINK_"
SINK_MANIFEST = ROOT / "k8s" / "base" / "sink.yaml"
SECRETS = ROOT / "k8s" / "secrets.example.yaml"
NOT_A_STRING = re.compile(r"[-+.]?[0-9][0-9_.:eE+-]*|true|false|yes|no|on|off|y|n|null|~", re.IGNORECASE)


def sink_setting_names() -> set[str]:
    names = {SINK_PREFIX + name.upper() for name in SinkSettings.model_fields if name != "kafka"}
    return names | {SINK_PREFIX + "KAFKA__" + name.upper() for name in KafkaSettings.model_fields}


def manifest_documents(path: Path, name: str = "") -> dict[str, str]:
    """Each document of a manifest by its kind (one of each kind here), of those named `name` if given."""
    documents: dict[str, str] = {}
    for text in re.split(r"(?m)^---$", path.read_text()):
        kind = re.search(r"(?m)^kind: (\w+)$", text)
        assert kind, f"a document without a kind in {path.name}"
        if name and not re.search(rf"(?m)^  name: {name}$", text):
            continue
        assert kind[1] not in documents, f"two {kind[1]}s in {path.name}"
        documents[kind[1]] = text
    return documents


def string_map(document: str, key: str) -> dict[str, str]:
    """The flat map of strings under the top-level `key:` (a ConfigMap's data, a Secret's
    stringData). Reads plain, quoted and literal-block (`|`) values; anything else fails the test
    rather than being misread, as does a plain value YAML would not read as a string."""
    lines = document.splitlines()
    at = lines.index(f"{key}:") + 1
    found: dict[str, str] = {}
    while at < len(lines) and (lines[at].startswith("  ") or not lines[at].strip()):
        line = lines[at]
        at += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = re.fullmatch(r"  ([A-Za-z0-9_.-]+): (.+)", line)
        assert entry, f"not a flat string entry under {key}: {line!r}"
        name, value = entry.groups()
        if value == "|":
            block = []
            while at < len(lines) and (lines[at].startswith("   ") or not lines[at].strip()):
                block.append(lines[at])
                at += 1
            indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
            value = "\n".join(line[indent:] for line in block).strip("\n") + "\n"
        elif value.startswith("'"):
            assert len(value) > 1, f"{name}: unterminated quote"
            assert value.endswith("'"), f"{name}: unterminated quote"
            value = value[1:-1].replace("''", "'")
        elif value.startswith('"'):
            value = json.loads(value)  # the simple escapes used here mean the same in JSON
        else:
            assert not NOT_A_STRING.fullmatch(value), f"{name}: {value} is not a string in YAML; quote it"
            assert value[0] not in "{[&*!|>%@`'\"#", f"{name}: {value!r} is not a plain scalar"
            assert ": " not in value, f"{name}: {value!r} needs quotes"
            assert " #" not in value, f"{name}: {value!r} needs quotes"
        assert name not in found, f"{name} twice under {key}"
        found[name] = value
    return found


def sink_manifest_env() -> tuple[dict[str, str], dict[str, str]]:
    """The ConfigMap's data of the sink's manifest and the stringData of the example Secret it refers to."""
    config = manifest_documents(SINK_MANIFEST)["ConfigMap"]
    secret = manifest_documents(SECRETS, "outboxkit-sink")["Secret"]
    return string_map(config, "data"), string_map(secret, "stringData")


@pytest.fixture
def sink_settings(monkeypatch: pytest.MonkeyPatch) -> SinkSettings:
    """SinkSettings from exactly the manifest's environment, as `envFrom` gives it to the container."""
    for name in os.environ:
        if name.upper().startswith(SINK_PREFIX):
            monkeypatch.delenv(name)
    config, secret = sink_manifest_env()
    for name, value in (config | secret).items():
        monkeypatch.setenv(name, value)
    return SinkSettings(_env_file=None)


def test_the_sink_manifest_uses_real_settings() -> None:
    used = names_in_k8s(r"OUTBOXKIT_SINK_[A-Z_]+[A-Z]")
    assert SINK_PREFIX + "WAREHOUSE_URL" in used
    assert used <= sink_setting_names()
    config, secret = sink_manifest_env()
    assert not set(config) & set(secret)
    for name in config | secret:  # a misspelt name would be ignored by SinkSettings, silently
        assert name in sink_setting_names(), f"{name} is not a sink setting"


def test_the_sink_manifest_sets_every_setting_it_names(sink_settings: SinkSettings) -> None:
    config, secret = sink_manifest_env()
    for name in config | secret:
        field, _, nested = name.removeprefix(SINK_PREFIX).lower().partition("__")
        assert field in sink_settings.model_fields_set, name
        if nested:
            assert nested in getattr(sink_settings, field).model_fields_set, name
    assert sink_settings.kafka.bootstrap_servers == config[SINK_PREFIX + "KAFKA__BOOTSTRAP_SERVERS"]
    assert sink_settings.http_port == int(config[SINK_PREFIX + "HTTP_PORT"])


def test_the_sink_manifest_tables_are_valid_mappings(sink_settings: SinkSettings) -> None:
    config, _ = sink_manifest_env()
    raw = json.loads(config[SINK_PREFIX + "TABLES"])
    assert isinstance(raw, list)
    for entry in raw:  # TableMapping ignores unknown keys: a misspelt one would do nothing
        assert set(entry) <= set(TableMapping.model_fields), f"unknown keys in {entry}"
    mappings = [TableMapping.model_validate(entry) for entry in raw]
    assert {mapping.mode for mapping in mappings} >= {"upsert", "append"}
    assert sink_settings.tables == mappings


def test_the_sink_manifest_keeps_secrets_in_the_secret_and_writes_to_postgresql(
    sink_settings: SinkSettings,
) -> None:
    config, secret = sink_manifest_env()
    secret_fields = {
        SINK_PREFIX + name.upper()
        for name, field in SinkSettings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    } | {
        SINK_PREFIX + "KAFKA__" + name.upper()
        for name, field in KafkaSettings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert SINK_PREFIX + "WAREHOUSE_URL" in secret_fields
    assert not secret_fields & set(config)
    assert SINK_PREFIX + "WAREHOUSE_URL" in secret
    assert sink_settings.warehouse_url.get_secret_value().startswith("postgresql://")
    assert make_url(warehouse_url(sink_settings)).drivername == "postgresql+psycopg"


def test_the_sink_manifest_probes_and_metrics_are_what_the_sink_serves() -> None:
    deployment = manifest_documents(SINK_MANIFEST)["Deployment"]
    config, _ = sink_manifest_env()
    port = int(config[SINK_PREFIX + "HTTP_PORT"])

    ports = dict(re.findall(r"- \{name: ([\w-]+), containerPort: (\d+)\}", deployment))
    assert ports == {"metrics": str(port)}
    annotation = re.search(r'prometheus\.io/port: "(\d+)"', deployment)
    assert annotation, "no prometheus.io/port annotation"
    assert annotation[1] == str(port)
    scraped = re.search(r"prometheus\.io/path: (\S+)", deployment)
    assert scraped, "no prometheus.io/path annotation"
    paths = {"/metrics": scraped[1]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        found = re.search(rf"{probe}:\n\s+httpGet: \{{path: (\S+), port: ([\w-]+)\}}", deployment)
        assert found, f"no httpGet {probe}"
        assert found[2] in ports or found[2] == str(port)
        paths[path] = found[1]
    assert all(expected == used for expected, used in paths.items()), paths

    server = serve(0, Metrics(), Health(), host="127.0.0.1")  # what the sink starts on its http_port
    try:
        for path in paths.values():
            url = f"http://127.0.0.1:{server.server_address[1]}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = response.status
            except urllib.error.HTTPError as error:  # /readyz: 503 until a first round went well
                status = error.code
                error.close()
            assert status != 404, f"{path} is not served"
    finally:
        server.shutdown()
        server.server_close()
