"""The README and the manifests name only settings that exist, and every relay setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from relay import RelaySettings

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


def test_the_sidecar_manifest_uses_real_settings() -> None:
    used = relay_names_in(ROOT / "k8s" / "relay-sidecar.yaml")
    assert used
    assert used <= relay_setting_names()
