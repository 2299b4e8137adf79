"""What under k8s/ is a manifest to check, and its rendered text: shared by the offline validators
(tests/test_k8s_manifests.py) and the real API server's checks (tests/test_k8s_apiserver.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomizations() -> list[Path]:
    """Every kustomization under k8s/ that renders on its own (components only render inside one)."""
    found = []
    for name in KUSTOMIZATION_NAMES:
        for path in K8S.rglob(name):
            if not re.search(r"^kind:\s*Component\s*$", path.read_text(), re.M):
                found.append(path.parent)
    return sorted(found)


def sources() -> list[Path]:
    """What to render: each kustomization, and each YAML file that no kustomization directory holds."""
    roots = {path.parent for name in KUSTOMIZATION_NAMES for path in K8S.rglob(name)}
    loose = [
        path
        for path in sorted(K8S.rglob("*.y*ml"))
        if path.name not in KUSTOMIZATION_NAMES and not any(root in path.parents for root in roots)
    ]
    return kustomizations() + loose


def source_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def rendered(source: Path) -> str:
    """The YAML a cluster would be given: `kubectl kustomize` (offline, kubectl's own kustomize)
    for a kustomization, the file itself otherwise."""
    if source.is_file():
        return source.read_text()
    done = subprocess.run(
        ["kubectl", "kustomize", str(source)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"`kubectl kustomize {source_id(source)}` failed:\n{done.stderr}"
    return done.stdout
