"""Our manifests against a real kube-apiserver: strict server-side validation, then admission.

Run by `make k8s-check`, not by `make test`: the API server is built from source (5 to 15 minutes
the first time, then cached; see scripts/k8s-apiserver) and a fresh clone's `make test` must stay
well inside CI's time. The marker below is deselected by pyproject's addopts, so `make test` shows
these as deselected, never as passed.

What a server says that no offline validator does: `--dry-run=server --validate=strict` runs the
real decoding (unknown and duplicate fields), defaulting, validation and admission for every
rendered object. Pod Security admission only enforces on Pods, and with no controller-manager a
Deployment makes none, so each pod template is also created as a bare Pod, for real, in a namespace
that enforces `restricted`: the API server refusing it is what a cluster would do to the pods.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.k8s_sources import source_id, sources

pytestmark = pytest.mark.k8s_apiserver

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "k8s-apiserver"
STAND_IN_CRDS = Path(__file__).with_name("k8s_stand_in_crds.yaml")
Obj = dict[str, Any]


@dataclass(frozen=True)
class Kubectl:
    """kubectl against the check's API server, with its output kept for the failure message."""

    kubeconfig: Path

    def __call__(self, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, check=False, input=stdin, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            pytest.fail(
                f"`kubectl {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr}{proc.stdout}",
                pytrace=False,
            )
        return proc

    def render(self, source: Path) -> list[Obj]:
        """The objects a user would apply: kustomize's output, or the file, as JSON."""
        text = self("kustomize", str(source)).stdout if source.is_dir() else source.read_text()
        return parse_json_stream(
            self("create", "--dry-run=client", "-o", "json", "-f", "-", stdin=text).stdout
        )


def parse_json_stream(text: str) -> list[Obj]:
    """kubectl prints one JSON document per object, one after the other."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        obj, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        objects.append(obj)
    return objects


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    """The API server of scripts/k8s-apiserver, started if it is not running; never built here."""
    if shutil.which("kubectl") is None:
        pytest.fail(
            "kubectl is not on PATH: install a kubectl within one minor version of tools/kube-apiserver",
            pytrace=False,
        )
    env = dict(os.environ, OUTBOXKIT_K8S_BUILD="0")  # the cold build is `make k8s-apiserver`'s job
    up = subprocess.run(
        [str(SCRIPT), "up"], check=False, capture_output=True, text=True, env=env, timeout=280
    )
    if up.returncode != 0:
        pytest.fail(f"scripts/k8s-apiserver up failed:\n{up.stderr}{up.stdout}", pytrace=False)
    kubeconfig = Path(up.stdout.strip().splitlines()[-1].removeprefix("KUBECONFIG="))
    run = Kubectl(kubeconfig)
    require_supported_skew(run)
    run("apply", "--server-side", "-f", str(STAND_IN_CRDS))
    run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(STAND_IN_CRDS))
    return run


def require_supported_skew(kubectl: Kubectl) -> None:
    """kubectl is supported within one minor version of the server; beyond, its verdicts are not ours."""
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    client, server = (versions[side]["gitVersion"] for side in ("clientVersion", "serverVersion"))
    print(f"kubectl {client}, kube-apiserver {server}")
    minors = [int(versions[side]["minor"].rstrip("+")) for side in ("clientVersion", "serverVersion")]
    if abs(minors[0] - minors[1]) > 1:
        pytest.fail(
            f"kubectl {client} is more than one minor version from kube-apiserver {server}: "
            f"put a kubectl 1.{minors[1]} first on PATH",
            pytrace=False,
        )


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace enforcing `restricted`, with the `default` service account that a
    controller-manager would have made (the ServiceAccount admission plugin requires it)."""
    name = f"outboxkit-check-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    kubectl("create", "serviceaccount", "default", "-n", name)
    yield name
    # Without a namespace controller the namespace stays Terminating; what is in it never runs.
    kubectl("delete", "namespace", name, "--wait=false")


def into(objects: list[Obj]) -> str:
    """Objects as a YAML stream of JSON documents, with any namespace dropped so that `-n` puts them
    in ours. Not a v1 List: kubectl validates a List itself, and the server's word is the point."""
    items = copy.deepcopy(objects)
    for item in items:
        item.get("metadata", {}).pop("namespace", None)
    return "\n---\n".join(json.dumps(item) for item in items)


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(Kind/name, template) for each object that makes pods: workloads, Jobs and CronJobs."""
    for item in objects:
        spec = item.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template and "containers" in template.get("spec", {}):
            yield f"{item['kind']}/{item['metadata']['name']}", template


def bare_pod(kind_name: str, template: Obj) -> Obj:
    meta = template.get("metadata", {})
    name = re.sub(r"[^a-z0-9-]", "-", kind_name.lower())
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": template["spec"],
        "metadata": {
            "name": name,
            "labels": meta.get("labels", {}),
            "annotations": meta.get("annotations", {}),
        },
    }


def without_run_as_non_root(pod: Obj) -> Obj:
    """The planted violation: no runAsNonRoot anywhere, so nothing proves the process is not root."""
    planted = copy.deepcopy(pod)
    spec = planted["spec"]
    for holder in [spec, *spec.get("containers", []), *spec.get("initContainers", [])]:
        holder.get("securityContext", {}).pop("runAsNonRoot", None)
    planted["metadata"]["name"] += "-planted"
    return planted


def create(kubectl: Kubectl, namespace: str, pod: Obj) -> subprocess.CompletedProcess[str]:
    return kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod), check=False)


@pytest.mark.parametrize("source", sources(), ids=source_id)
def test_the_server_accepts_every_object_strictly_and_admits_every_pod(
    kubectl: Kubectl, namespace: str, source: Path
) -> None:
    objects = kubectl.render(source)
    dry = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-", stdin=into(objects)
    )
    print(f"{source_id(source)}: server dry-run, strict:\n{dry.stdout}{dry.stderr}")
    # PodSecurity only warns on workloads; the warning names the violations a Pod would be refused for.
    problems = [line for line in dry.stderr.splitlines() if "PodSecurity" in line]
    kubectl("apply", "-n", namespace, "-f", "-", stdin=into(objects))
    for kind_name, template in pod_templates(objects):
        verdict = create(kubectl, namespace, bare_pod(kind_name, template))
        print(f"  Pod from {kind_name}: {(verdict.stdout + verdict.stderr).strip()}")
        if verdict.returncode != 0:
            problems.append(f"Pod from {kind_name}: {verdict.stderr.strip()}")
    assert not problems, f"{source_id(source)} in a namespace enforcing `restricted`:\n" + "\n".join(problems)


@pytest.mark.parametrize("source", sources(), ids=source_id)
def test_a_pod_without_run_as_non_root_is_refused(kubectl: Kubectl, namespace: str, source: Path) -> None:
    """The check can fail: each pod template, less runAsNonRoot, is refused by enforcement."""
    objects = kubectl.render(source)
    kubectl("apply", "-n", namespace, "-f", "-", stdin=into(objects))  # the service accounts they name
    templates = list(pod_templates(objects))
    if not templates:
        pytest.skip(f"{source_id(source)} has no pod template")
    for kind_name, template in templates:
        verdict = create(kubectl, namespace, without_run_as_non_root(bare_pod(kind_name, template)))
        print(f"  planted Pod from {kind_name}: {verdict.stderr.strip()}")
        assert verdict.returncode != 0
        assert 'violates PodSecurity "restricted:latest"' in verdict.stderr
        assert "runAsNonRoot" in verdict.stderr


def test_strict_validation_refuses_an_unknown_field(kubectl: Kubectl, namespace: str) -> None:
    """The check can fail: a misspelt field is an error, not silently dropped as without strict."""
    deployment = next(
        item for source in sources() for item in kubectl.render(source) if item["kind"] == "Deployment"
    )
    deployment["spec"]["replicaz"] = 2
    dry = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=into([deployment]),
        check=False,
    )
    print(dry.stderr)
    assert dry.returncode != 0
    assert "Error from server (BadRequest)" in dry.stderr
    assert 'strict decoding error: unknown field "spec.replicaz"' in dry.stderr
