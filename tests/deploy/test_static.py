"""Deploy files checked without a container engine: lint, schema and cross-reference checks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import ROOT, explain, require_compose, require_tool, run

DOCKERFILES = sorted(p for p in ROOT.glob("**/Dockerfile*") if not {".venv", ".nox", "build"} & set(p.parts))
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
K8S_DIR = ROOT / "deploy" / "k8s"
INDEX = ROOT / "backends-index.yaml"
SHELL_SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("services/*/*.sh")])
# The accelerator keys LocalAI's backend gallery resolves (LocalAI falls back to "default").
CAPABILITY_KEYS = {
    "default",
    "cpu",
    "nvidia",
    "amd",
    "intel",
    "metal",
    "vulkan",
    "nvidia-l4t",
    "nvidia-cuda-12",
    "nvidia-cuda-13",
    "nvidia-l4t-cuda-12",
    "nvidia-l4t-cuda-13",
}


def test_a_dockerfile_exists() -> None:
    assert DOCKERFILES, "no Dockerfile in the repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint")
    result = run([hadolint, "--no-color", str(dockerfile)])
    assert result.returncode == 0, explain(result)


def test_every_backend_has_an_executable_run_sh() -> None:
    backends = [p for p in (ROOT / "services").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert backends
    for backend in backends:
        script = backend / "run.sh"
        assert script.is_file(), f"{backend.name}: no run.sh (LocalAI starts a backend with it)"
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_passes_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck")
    result = run([shellcheck, "--severity=style", str(script)])
    assert result.returncode == 0, explain(result)


def _fake_localfleet(folder: Path) -> Path:
    """A stand-in `localfleet` that prints how it was called, in a venv-shaped folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "localfleet"
    fake.write_text(f'#!/bin/sh\necho "{folder.name}: $*"\n')
    fake.chmod(0o755)
    return bin_dir


def test_run_sh_passes_localai_arguments_to_serve(tmp_path: Path) -> None:
    venv_bin = _fake_localfleet(tmp_path / "chosen")
    script = ROOT / "services" / "local-store" / "run.sh"
    # LocalAI starts it from the backend folder; an explicit venv wins over the repo's .venv.
    result = run(
        [str(script), "--addr", "127.0.0.1:41234"],
        cwd=script.parent,
        env={"LOCALFLEET_VENV": str(venv_bin.parent)},
        timeout=30,
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout.strip() == "chosen: serve local-store --addr 127.0.0.1:41234"


def test_run_sh_falls_back_to_localfleet_on_path(tmp_path: Path) -> None:
    # A copy outside any checkout, as in an image or a LocalAI backend folder with no venv.
    script = tmp_path / "backend" / "run.sh"
    script.parent.mkdir()
    script.write_bytes((ROOT / "services" / "local-store" / "run.sh").read_bytes())
    script.chmod(0o755)
    (script.parent / "BACKEND").write_text("local-store\n")  # as the image writes it
    path_bin = _fake_localfleet(tmp_path / "on-path")
    env = {"PATH": f"{path_bin}{os.pathsep}/usr/bin:/bin", "LOCALFLEET_VENV": ""}
    result = run([str(script), "--addr", "127.0.0.1:1"], cwd=script.parent, env=env, timeout=30)
    assert result.returncode == 0, explain(result)
    assert result.stdout.strip() == "on-path: serve local-store --addr 127.0.0.1:1"

    bare = {"PATH": "/usr/bin:/bin", "LOCALFLEET_VENV": ""}
    if shutil.which("localfleet", path=bare["PATH"]):
        pytest.skip("a localfleet is installed system-wide; cannot check the not-found message")
    missing = run([str(script)], cwd=script.parent, env=bare, timeout=30)
    assert missing.returncode == 127
    assert "no localfleet found" in missing.stderr


def test_run_sh_looks_up_start_up_models_beside_it(tmp_path: Path) -> None:
    # The image's layout: /opt/localfleet/{run.sh,BACKEND,models/}; the models folder is the default
    # LOCALFLEET_MODEL_PATH, and an explicit one wins.
    folder = tmp_path / "opt"
    (folder / "models").mkdir(parents=True)
    script = folder / "run.sh"
    script.write_bytes((ROOT / "services" / "local-store" / "run.sh").read_bytes())
    script.chmod(0o755)
    (folder / "BACKEND").write_text("llama-cpp\n")
    fake = tmp_path / "venv" / "bin" / "localfleet"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "models: $LOCALFLEET_MODEL_PATH"\n')
    fake.chmod(0o755)
    env = {"LOCALFLEET_VENV": str(fake.parent.parent), "PATH": "/usr/bin:/bin"}
    result = run([str(script)], cwd=folder, env=env, timeout=30)
    assert result.returncode == 0, explain(result)
    assert result.stdout.strip() == f"models: {folder / 'models'}"
    chosen = run([str(script)], cwd=folder, env={**env, "LOCALFLEET_MODEL_PATH": "/models"}, timeout=30)
    assert chosen.stdout.strip() == "models: /models"


def test_run_sh_watches_its_parent_unless_told_not_to(tmp_path: Path) -> None:
    # Core launches run.sh and may die: the backend watches it. `localfleet serve` alone does not.
    fake = tmp_path / "venv" / "bin" / "localfleet"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "watch: $LOCALAI_BACKEND_PARENT_WATCH"\n')
    fake.chmod(0o755)
    script = ROOT / "services" / "local-store" / "run.sh"
    env = {"LOCALFLEET_VENV": str(fake.parent.parent), "PATH": "/usr/bin:/bin"}
    unset = {k: v for k, v in os.environ.items() if k != "LOCALAI_BACKEND_PARENT_WATCH"}
    result = subprocess.run(
        [str(script)],
        cwd=script.parent,
        env={**unset, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "watch: true", result.stderr
    told = {**env, "LOCALAI_BACKEND_PARENT_WATCH": "false"}
    result = run([str(script)], cwd=script.parent, env=told, timeout=30)
    assert result.stdout.strip() == "watch: false", explain(result)


def test_compose_file_validates() -> None:
    compose = require_compose()
    result = run([*compose, "-f", str(COMPOSE_FILE), "config", "--quiet"])
    assert result.returncode == 0, explain(result)


def test_compose_check_fails_on_a_broken_file(tmp_path: Path) -> None:
    # The check above means something only if this compose reports errors through its exit status.
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  local-store:\n    image: x\n    ports: 50051\n")
    result = run([*require_compose(), "-f", str(broken), "config", "--quiet"])
    assert result.returncode != 0, explain(result)


def test_compose_service_has_health_check_volume_and_loopback_port() -> None:
    compose = require_compose()
    result = run([*compose, "-f", str(COMPOSE_FILE), "config", "--format", "json"])
    assert result.returncode == 0, explain(result)
    config = yaml.safe_load(result.stdout)
    service = config["services"]["local-store"]
    assert service["healthcheck"]["test"][:2] == ["CMD", "localfleet"]
    assert "ready" in service["healthcheck"]["test"]
    assert service["build"]["args"]["BACKEND"] == "local-store"
    [mount] = [v for v in service["volumes"] if v["target"] == service["environment"]["LOCALFLEET_STORE_DIR"]]
    assert mount["type"] == "volume"
    assert mount["source"] in config["volumes"]
    [port] = service["ports"]
    assert port["target"] == 50051
    assert port["host_ip"] == "127.0.0.1"


def _k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _validate_k8s(docs: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[deploy]')"
    )
    version = kubernetes_validate.latest_version()
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_k8s_manifests_validate_offline() -> None:
    docs = _k8s_documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service"}
    _validate_k8s(docs)


def test_kustomization_builds_valid_objects() -> None:
    kubectl = require_tool("kubectl")
    result = run([kubectl, "kustomize", str(K8S_DIR)])
    assert result.returncode == 0, explain(result)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in docs} == {d["kind"] for d in _k8s_documents()}
    _validate_k8s(docs)


def test_k8s_deployment_probes_grpc_health_as_non_root() -> None:
    deployments = [d for d in _k8s_documents() if d["kind"] == "Deployment"]
    assert "local-store" in {d["metadata"]["name"] for d in deployments}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, probe
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        if deployment["metadata"]["name"] == "local-store":
            assert any(e["name"] == "LOCALFLEET_STORE_DIR" for e in container["env"])
        for env in container["env"]:
            if env["name"] in {"LOCALFLEET_STORE_DIR", "HF_HOME"}:  # data that must outlive the pod
                assert any(env["value"].startswith(path) for path in mounted), (
                    f"{env['name']} is not on a volume"
                )
        [service] = [
            d
            for d in _k8s_documents()
            if d["kind"] == "Service" and d["metadata"]["name"] == deployment["metadata"]["name"]
        ]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_every_backend_has_a_k8s_deployment() -> None:
    backends = {p.name for p in (ROOT / "services").iterdir() if (p / "run.sh").exists()}
    deployments = {d["metadata"]["name"] for d in _k8s_documents() if d["kind"] == "Deployment"}
    assert backends - deployments == set(), "backends with no manifest in deploy/k8s"
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"} == listed


def test_backends_index_entries_resolve() -> None:
    entries = yaml.safe_load(INDEX.read_text())
    assert isinstance(entries, list)
    assert entries
    by_name = {e["name"]: e for e in entries}
    assert len(by_name) == len(entries), "duplicate names in backends-index.yaml"
    metas = [e for e in entries if e.get("capabilities") and not e.get("uri")]
    assert metas, "no meta entry (capabilities without uri)"
    for entry in entries:
        for field in ("name", "alias", "description", "license", "urls", "tags"):
            assert entry.get(field), f"{entry['name']}: no {field}"
        if entry in metas:
            assert "default" in entry["capabilities"], f"{entry['name']}: no default capability"
            assert set(entry["capabilities"]) <= CAPABILITY_KEYS, entry["capabilities"]
            for key, target in entry["capabilities"].items():
                assert target in by_name, f"{entry['name']}: {key} -> {target}, which is not an entry"
                assert by_name[target].get("uri"), f"{entry['name']}: {key} -> {target}, which has no image"
        else:
            assert entry.get("uri"), f"{entry['name']}: an image entry needs a uri"
            assert entry.get("mirrors"), f"{entry['name']}: an image entry needs mirrors"
    assert any(e["alias"] == "local-store" for e in metas)
