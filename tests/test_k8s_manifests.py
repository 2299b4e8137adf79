"""Every rendered manifest under k8s/, through the validators the field uses, offline.

- kubeconform `-strict` against Kubernetes' own schemas of every version from our minimum (1.29,
  native sidecars) up to the newest the `kubernetes-validate` wheel carries, and against strict
  schemas of our own for the three CRDs we use (tests/k8s_crd_schemas: PodMonitor, PrometheusRule,
  ScaledObject), so that no object is skipped;
- the restricted Pod Security Standard through the upstream evaluator (tools/pss, the code of
  kube-apiserver's PodSecurity admission) on every pod template, its output printed;
- kube-score, with the few checks we disagree with turned off and said why (KUBE_SCORE_ARGS).

Each validator is shown to fail on a mistake planted in a rendered copy: a check that cannot fail
proves nothing. The tools are built by scripts/k8s-tools into the cache (`make test` does it
first; a test run on its own builds them too). Then come checks of the manifests against the code:
the metrics the alerts use exist, the image is the version being released, the migration's URL
comes from a Secret, the sidecar is a native one without a readiness probe.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import names as jobs_names
from relay import names as relay_names
from sink import names as sink_names
from tests.k8s_sources import K8S, ROOT, rendered, source_id, sources

# The first test may build the validators (when not run through `make test`, which builds them
# first): minutes on two cold cores. Each tool's own run is capped at 300 s below.
pytestmark = pytest.mark.timeout(1800)

Obj = dict[str, Any]
CRD_SCHEMAS = Path(__file__).with_name("k8s_crd_schemas")
MIN_KUBERNETES = "1.29"
# kube-score's checks we turn off, each for a reason that holds for every pod we ship:
KUBE_SCORE_ARGS = (
    "--exit-one-on-warning",
    # A CPU limit throttles: a Kafka commit or a warehouse transaction stretched past its
    # timeout does more harm than a busy neighbour. Requests place the pods.
    "--ignore-container-cpu-limit",
    # Tags are immutable versions, and `make image` builds into the node's store with no registry
    # to pull from: Always would make every start fail there, and buys nothing with fixed tags.
    "--ignore-test=container-image-pull-policy",
    # Spreading is done by topologySpreadConstraints (ScheduleAnyway), which kube-score checks
    # itself (pod-topology-spread-constraints); a required anti-affinity would leave replicas
    # beyond the node count unschedulable.
    "--ignore-test=deployment-has-host-podantiaffinity",
    # Not on by default, and part of the restricted standard: check it here too.
    "--enable-optional-test=container-seccomp-profile",
)
# Metrics an alert may use that are not ours: kube-state-metrics' restart counters.
EXTERNAL_METRICS = {
    "kube_pod_init_container_status_restarts_total",
    "kube_pod_container_status_restarts_total",
}


@dataclass(frozen=True)
class Tools:
    kubeconform: str
    kube_score: str
    pss: str
    schemas: Path

    def versions(self) -> list[str]:
        """The Kubernetes versions whose schemas were built: the minimum and every one after it."""
        found = [
            path.name.removesuffix("-standalone-strict") for path in self.schemas.glob("v*-standalone-strict")
        ]
        return sorted(found, key=lambda version: tuple(int(part) for part in version.lstrip("v").split(".")))


@pytest.fixture(scope="session")
def tools() -> Tools:
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s-tools"), "paths"],
        capture_output=True,
        text=True,
        timeout=1800,  # a cold build: a few minutes on two shared cores
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"scripts/k8s-tools could not build the validators:\n{built.stderr}", pytrace=False)
    paths = json.loads(built.stdout)
    return Tools(paths["kubeconform"], paths["kube-score"], paths["pss"], Path(paths["schemas"]))


@pytest.fixture(scope="session")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each source rendered into a file of its own, by its name under k8s/."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for source in sources():
        path = out / (source_id(source).replace("/", "_") + ("" if source.suffix else ".yaml"))
        path.write_text(rendered(source))
        files[source_id(source)] = path
    return files


def objects(files: dict[str, Path]) -> Iterator[Obj]:
    for path in files.values():
        yield from (item for item in yaml.safe_load_all(path.read_text()) if item)


def planted(files: dict[str, Path], tmp_path: Path, change: Callable[[Obj], None]) -> Path:
    """A rendered copy of everything with `change` applied to every object, as one file."""
    items = list(objects(files))
    for item in items:
        change(item)
    copy = tmp_path / "planted.yaml"
    copy.write_text(yaml.safe_dump_all(items))
    return copy


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in cmd], capture_output=True, text=True, timeout=300, check=False
    )


def pod_specs(item: Obj) -> Iterator[Obj]:
    spec = item.get("spec", {})
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template")
    if template is not None:
        yield template["spec"]


def containers(item: Obj) -> Iterator[Obj]:
    for pod in pod_specs(item):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


# --------------------------------------------------------------------------- kubeconform


def kubeconform(tools: Tools, version: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-kubernetes-version",
        version.lstrip("v"),
        "-schema-location",
        tools.schemas,
        "-schema-location",
        f"{CRD_SCHEMAS}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        *files,
    )


def test_the_schemas_cover_the_minimum_kubernetes_version_and_later(tools: Tools) -> None:
    versions = tools.versions()
    assert versions[0] == f"v{MIN_KUBERNETES}.0"
    assert len(versions) >= 3, versions


def test_every_manifest_is_strict_clean_for_every_supported_kubernetes_version(
    tools: Tools, manifests: dict[str, Path]
) -> None:
    for version in tools.versions():
        checked = kubeconform(tools, version, *manifests.values())
        print(f"kubeconform {version}: {checked.stdout.strip()}")
        assert checked.returncode == 0, f"Kubernetes {version}:\n{checked.stdout}{checked.stderr}"
        # Every object validated against a schema: none skipped, none without one.
        assert re.search(r"Invalid: 0, Errors: 0, Skipped: 0", checked.stdout), checked.stdout


def misspell_a_container_field(item: Obj) -> None:
    for container in containers(item):
        container["readinesProbe"] = container.pop("readinessProbe", {"httpGet": {"path": "/", "port": 1}})


def misspell_an_alert_field(item: Obj) -> None:
    if item["kind"] == "PrometheusRule":
        rule = item["spec"]["groups"][0]["rules"][0]
        rule["expression"] = rule.pop("expr")


def pod_level_resources(item: Obj) -> None:
    """Pod-level resources came after 1.29 (1.32): a manifest using them breaks our minimum."""
    for pod in pod_specs(item):
        pod["resources"] = {"requests": {"memory": "256Mi"}}


@pytest.mark.parametrize(
    ("plant", "field"),
    [(misspell_a_container_field, "readinesProbe"), (misspell_an_alert_field, "expression")],
)
def test_kubeconform_refuses_a_misspelt_field_in_a_core_object_and_in_a_crd(
    tools: Tools, manifests: dict[str, Path], tmp_path: Path, plant: Callable[[Obj], None], field: str
) -> None:
    checked = kubeconform(tools, f"v{MIN_KUBERNETES}.0", planted(manifests, tmp_path, plant))
    print(checked.stdout)
    assert checked.returncode == 1
    assert f"additional properties '{field}' not allowed" in checked.stdout


def test_kubeconform_refuses_a_field_newer_than_the_minimum_version(
    tools: Tools, manifests: dict[str, Path], tmp_path: Path
) -> None:
    copy = planted(manifests, tmp_path, pod_level_resources)
    assert kubeconform(tools, tools.versions()[-1], copy).returncode == 0  # a real field, today
    too_new = kubeconform(tools, f"v{MIN_KUBERNETES}.0", copy)
    assert too_new.returncode == 1
    assert "additional properties 'resources' not allowed" in too_new.stdout


# --------------------------------------------------------------------------- Pod Security


def test_every_pod_template_passes_the_restricted_pod_security_standard(
    tools: Tools, manifests: dict[str, Path]
) -> None:
    checked = run(tools.pss, "-level", "restricted", "-version", "latest", *manifests.values())
    print(checked.stdout, checked.stderr)  # the evaluator's verdict per pod template
    assert checked.returncode == 0, checked.stdout + checked.stderr
    templates = {
        f"{item['kind']}/{item['metadata']['name']}" for item in objects(manifests) if any(pod_specs(item))
    }
    assert templates >= {
        "Deployment/outboxkit-sink",
        "Deployment/shop",
        "Job/outboxkit-migrate",
        "Job/outboxkit-sink-status",
    }
    for name in templates:
        assert f"{name}: allowed by restricted:latest" in checked.stdout


def relay_may_escalate(item: Obj) -> None:
    for container in containers(item):
        if container["name"] == "outboxkit-relay":
            container["securityContext"]["allowPrivilegeEscalation"] = True


def migration_as_root(item: Obj) -> None:
    if item["kind"] == "Job":
        for pod in pod_specs(item):
            pod["securityContext"]["runAsNonRoot"] = False
            pod["containers"][0]["securityContext"].pop("runAsNonRoot")


@pytest.mark.parametrize(
    ("plant", "verdict"),
    [
        (
            relay_may_escalate,
            "Deployment/shop: forbidden by restricted:latest: allowPrivilegeEscalation != false "
            '(container "outboxkit-relay"',
        ),
        (migration_as_root, "Job/outboxkit-migrate: forbidden by restricted:latest: runAsNonRoot != true"),
    ],
)
def test_the_pod_security_evaluator_refuses_a_planted_violation(
    tools: Tools, manifests: dict[str, Path], tmp_path: Path, plant: Callable[[Obj], None], verdict: str
) -> None:
    checked = run(tools.pss, planted(manifests, tmp_path, plant))
    print(checked.stdout)
    assert checked.returncode == 1
    assert verdict in checked.stdout


# --------------------------------------------------------------------------- kube-score


def test_kube_score_finds_nothing_on_any_manifest(tools: Tools, manifests: dict[str, Path]) -> None:
    scored = run(tools.kube_score, "score", *KUBE_SCORE_ARGS, *manifests.values())
    print(scored.stdout)
    assert scored.returncode == 0, scored.stdout + scored.stderr


def latest_tag(item: Obj) -> None:
    for container in containers(item):
        container["image"] = container["image"].rpartition(":")[0] + ":latest"


def test_kube_score_refuses_a_moving_image_tag(
    tools: Tools, manifests: dict[str, Path], tmp_path: Path
) -> None:
    scored = run(tools.kube_score, "score", *KUBE_SCORE_ARGS, planted(manifests, tmp_path, latest_tag))
    print(scored.stdout)
    assert scored.returncode == 1
    assert "Image with latest tag" in scored.stdout


# --------------------------------------------------------------------------- against the code


def our_metric_names() -> set[str]:
    """Every metric name relay/names.py, sink/names.py and jobs/names.py define."""
    found: set[str] = set()
    for module in (relay_names, sink_names, jobs_names):
        for value in vars(module).values():
            pairs = value.values() if isinstance(value, dict) else [value]
            found |= {
                pair[0] for pair in pairs if isinstance(pair, tuple) and str(pair[0]).startswith("outboxkit_")
            }
    return found


def unknown_metrics(rule: Obj) -> set[str]:
    """The metrics of an alert's expression that neither names.py nor kube-state-metrics has."""
    used = set(re.findall(r"\b((?:outboxkit|kube)_[a-z0-9_]+)", rule["expr"]))
    ours = our_metric_names()
    histogram = {f"{name}{suffix}" for name in ours for suffix in ("_bucket", "_sum", "_count")}
    return used - ours - histogram - EXTERNAL_METRICS


def alerts(files: dict[str, Path]) -> list[Obj]:
    return [
        rule
        for item in objects(files)
        if item["kind"] == "PrometheusRule"
        for group in item["spec"]["groups"]
        for rule in group["rules"]
    ]


def test_every_metric_an_alert_uses_is_one_the_processes_export(manifests: dict[str, Path]) -> None:
    rules = alerts(manifests)
    names = {rule["alert"] for rule in rules}
    assert {
        "OutboxkitBacklogOld",
        "OutboxkitRelayNotReady",
        "OutboxkitShardsUnheld",
        "OutboxkitRelayDeadLetters",
        "OutboxkitRelayRestarting",
        "OutboxkitSinkStoppedPartitions",
        "OutboxkitSinkLag",
        "OutboxkitSinkNotReady",
        "OutboxkitSinkDeadLetters",
        "OutboxkitSinkRestarting",
        "OutboxkitJobsDeadLetters",
        "OutboxkitJobsNotReady",
        "OutboxkitJobsDeliveryFailing",
    } <= names
    for rule in rules:
        assert not unknown_metrics(rule), f"{rule['alert']} uses {unknown_metrics(rule)}"
    # The check itself: the relay's counter under its old name is not a metric any more.
    assert unknown_metrics({"expr": "increase(outboxkit_relay_quarantined_total[5m]) > 0"}) == {
        "outboxkit_relay_quarantined_total"
    }


def test_every_outboxkit_image_is_the_version_being_released(manifests: dict[str, Path]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {container["image"] for item in objects(manifests) for container in containers(item)}
    ours = {image for image in images if "outboxkit" in image}
    assert ours == {f"localhost/outboxkit:{version}"}, ours  # every container of ours, set by kustomize
    assert not [image for image in images if image.endswith(":latest") or ":" not in image]


def test_the_migration_job_takes_its_url_from_a_secret_and_no_manifest_holds_a_credential(
    manifests: dict[str, Path],
) -> None:
    (job,) = (
        item
        for item in objects(manifests)
        if item["metadata"]["name"] == "outboxkit-migrate" and any(pod_specs(item))
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert "command" not in container
    (url,) = (env for env in container["env"] if env["name"] == "OUTBOXKIT_MIGRATE_URL")
    assert set(url["valueFrom"]) == {"secretKeyRef"}
    for item in objects(manifests):
        if item["kind"] != "Secret":
            assert "change-me" not in json.dumps(item), f"{item['kind']}/{item['metadata']['name']}"
            assert "://" not in json.dumps(item.get("data", {})) + json.dumps(list(containers(item)))


def test_the_relay_is_a_native_sidecar_that_never_gates_its_app(manifests: dict[str, Path]) -> None:
    (app,) = (
        item
        for item in objects(manifests)
        if item["kind"] == "Deployment" and item["metadata"]["name"] == "shop"
    )
    (pod,) = pod_specs(app)
    (relay,) = (container for container in pod["initContainers"] if container["name"] == "outboxkit-relay")
    assert relay["restartPolicy"] == "Always"  # a native sidecar: Kubernetes 1.29 and later
    assert "readinessProbe" not in relay  # its readiness would count toward the pod's
    assert relay["startupProbe"]["httpGet"]["path"] == "/healthz"  # holds the app's start: liveness only
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert [container["name"] for container in pod["containers"]] == ["app"]  # the app's own, untouched


def test_the_stated_minimum_kubernetes_version_is_the_one_checked() -> None:
    script = (ROOT / "scripts" / "k8s-tools").read_text()
    assert f"MIN_KUBERNETES = ({MIN_KUBERNETES.replace('.', ', ')})" in script
    readme = (K8S / "README.md").read_text()
    assert f"Kubernetes {MIN_KUBERNETES} or later" in readme
