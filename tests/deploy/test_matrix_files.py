"""The files scripts/matrix_files.py writes, checked against the build matrix they come from.

Expectations are spelt out here from the matrix's data (not by calling the generator's code), so a
generator bug shows as a failure, not as a matching mistake on both sides.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from localfleet.matrix import Matrix, load
from tests.deploy.test_static import _validate_k8s
from tests.deploy.tools import ROOT, explain, require_compose, require_tool, run

GENERATOR = ROOT / "scripts" / "matrix_files.py"
INDEX = ROOT / "backends-index.yaml"
COMPOSE = ROOT / "compose" / "matrix.yaml"
OVERLAYS = ROOT / "deploy" / "overlays"
M: Matrix = load(ROOT)
CONTAINER_TYPES = [bt for bt, kind in M.build_types.items() if kind.container]


def own(backend: str, bt: str) -> bool:
    """The backend has a build of its own for this build type (not its cpu build)."""
    return M.build(backend, bt).uses == bt


def tag(channel: str, bt: str, backend: str) -> str:
    """LocalAI's image tag scheme, written out: <channel>-<build type tag>-<backend>."""
    return f"{channel}-{M.build_types[bt].tag}-{backend}"


def entry_name(bt: str, backend: str, development: bool = False) -> str:
    name = f"{M.build_types[bt].gallery}-localfleet-{backend}"
    return name + "-development" if development else name


# --- the generator -------------------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    result = run([sys.executable, str(GENERATOR), "--check"])
    assert result.returncode == 0, explain(result)


def _copy_inputs_and_outputs(dst: Path) -> None:
    shutil.copy(ROOT / "build-types.toml", dst / "build-types.toml")
    for pyproject in ROOT.glob("services/*/pyproject.toml"):
        (dst / pyproject.parent.relative_to(ROOT)).mkdir(parents=True)
        shutil.copy(pyproject, dst / pyproject.relative_to(ROOT))
    (dst / "compose").mkdir()
    shutil.copy(INDEX, dst / INDEX.name)
    shutil.copy(COMPOSE, dst / "compose" / COMPOSE.name)
    shutil.copytree(OVERLAYS, dst / OVERLAYS.relative_to(ROOT))


def test_check_names_stale_files_and_a_run_brings_them_up_to_date(tmp_path: Path) -> None:
    _copy_inputs_and_outputs(tmp_path)
    check = [sys.executable, str(GENERATOR), "--check", "--root", str(tmp_path)]
    assert run(check).returncode == 0, explain(run(check))

    # A new tag for one build type changes the index, compose and that build type's overlay only.
    types = tmp_path / "build-types.toml"
    types.write_text(types.read_text().replace('tag = "gpu-vulkan"', 'tag = "gpu-vulkan-2"'))
    leftover = tmp_path / "deploy/overlays/gone/kustomization.yaml"
    leftover.parent.mkdir()
    leftover.write_text("{}\n")
    result = run(check)
    assert result.returncode == 1, explain(result)
    named = set(re.findall(r"stale: (\S+)", result.stderr))
    assert named == {
        "backends-index.yaml",
        "compose/matrix.yaml",
        "deploy/overlays/vulkan/kustomization.yaml",
        "deploy/overlays/gone/kustomization.yaml",
    }, result.stderr

    written = run([sys.executable, str(GENERATOR), "--root", str(tmp_path)])
    assert written.returncode == 0, explain(written)
    assert run(check).returncode == 0
    assert not leftover.parent.exists()
    assert "-gpu-vulkan-2-llama-cpp" in (tmp_path / "compose/matrix.yaml").read_text()


# --- backends-index.yaml --------------------------------------------------------------------------------


def _index() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in yaml.safe_load(INDEX.read_text())}


def test_index_meta_entries_map_every_capability_to_the_image_that_serves_it() -> None:
    entries = _index()
    for backend in M.backends:
        for development in (False, True):
            name = f"localfleet-{backend}" + ("-development" if development else "")
            meta = entries[name]
            assert "uri" not in meta, name
            assert meta["alias"] == backend
            expected = {
                kind.capability: entry_name(bt if own(backend, bt) else "cpu", backend, development)
                for bt, kind in M.build_types.items()
            }
            assert meta["capabilities"] == expected, name


def test_index_has_one_image_entry_per_own_build_and_channel() -> None:
    entries = _index()
    images = {name: entry for name, entry in entries.items() if "uri" in entry}
    expected: dict[str, str] = {}
    for backend in M.backends:
        for bt in M.build_types:
            if own(backend, bt):  # a cell that uses cpu adds no image: its capability names the cpu one
                expected[entry_name(bt, backend)] = tag("latest", bt, backend)
                expected[entry_name(bt, backend, True)] = tag("master", bt, backend)
    assert set(images) == set(expected)
    for name, image_tag in expected.items():
        assert images[name]["uri"] == f"ghcr.io/localfleet/backends:{image_tag}"
        assert images[name]["mirrors"] == [f"docker.io/localfleet/backends:{image_tag}"]
    # Spot checks of LocalAI's own spelling of the scheme.
    assert images["cuda12-localfleet-transformers"]["uri"].endswith(":latest-gpu-nvidia-cuda-12-transformers")
    assert images["metal-localfleet-llama-cpp-development"]["uri"].endswith(
        ":master-metal-darwin-arm64-llama-cpp"
    )


def test_index_text_comes_from_each_backends_gallery_table() -> None:
    entries = _index()
    for backend, package in M.backends.items():
        with (package.folder / "pyproject.toml").open("rb") as f:
            gallery = tomllib.load(f)["tool"]["localfleet"]["gallery"]
        gpu = any(own(backend, bt) and M.build_types[bt].k8s_resource for bt in M.build_types)
        for entry in entries.values():
            if entry["alias"] != backend:
                continue
            assert entry["description"] == gallery["description"]
            assert entry["license"] == gallery["license"]
            assert entry["urls"] == gallery["urls"]
            assert entry["tags"] == [*gallery["tags"], "CPU", *(["GPU"] if gpu else [])]


# --- compose/matrix.yaml ----------------------------------------------------------------------------------


def _compose(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run([*require_compose(), "-f", str(COMPOSE), *args], env=env)
    assert result.returncode == 0, explain(result)
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _all_services(env: dict[str, str] | None = None) -> dict[str, Any]:
    services: dict[str, Any] = _compose("--profile", "*", "config", "--format", "json", env=env)["services"]
    return services


def test_compose_matrix_has_a_service_per_container_build() -> None:
    services = _all_services()
    expected = {(b, bt) for b in M.backends for bt in CONTAINER_TYPES if own(b, bt)}
    assert set(services) == {f"{b}-{bt}" for b, bt in expected}
    for backend, bt in expected:
        service = services[f"{backend}-{bt}"]
        cell = M.build(backend, bt)
        assert service["image"] == f"localfleet/backends:{tag('latest', bt, backend)}"
        assert service["build"]["context"] == str(ROOT)
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["build"]["args"] == {
            "BACKEND": backend,
            "BUILD_TYPE": bt,
            "BASE_IMAGE": cell.base_image,
            "RUNTIME_IMAGE": cell.runtime_image,
        }
        assert set(service["profiles"]) == {backend, bt}


def test_compose_matrix_images_and_base_images_follow_the_environment() -> None:
    env = {"LOCALFLEET_CHANNEL": "master", "LOCALFLEET_CPU_BASE_IMAGE": "localfleet-base:bookworm"}
    services = _all_services(env)
    cpu = services["local-store-cpu"]
    assert cpu["image"] == f"localfleet/backends:{tag('master', 'cpu', 'local-store')}"
    # With no runtime image of its own, the final stage follows the base image.
    assert (
        cpu["build"]["args"]["BASE_IMAGE"]
        == cpu["build"]["args"]["RUNTIME_IMAGE"]
        == env["LOCALFLEET_CPU_BASE_IMAGE"]
    )
    cuda = services["llama-cpp-cublas12"]["build"]["args"]
    assert cuda["BASE_IMAGE"] == M.build_types["cublas12"].base_image


def test_compose_gpu_services_reserve_their_device() -> None:
    services = _all_services()
    for name, service in services.items():
        kind = M.build_types[service["build"]["args"]["BUILD_TYPE"]]
        reserved = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        mapped = [device["source"] for device in service.get("devices", [])]
        if kind.compose_gpu == "nvidia":
            assert reserved == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        else:
            assert not reserved, name
        assert mapped == list(kind.compose_devices), name
        assert service.get("group_add", []) == list(kind.compose_groups), name
        if kind.k8s_resource:  # every GPU build type hands its device over one way or the other
            assert reserved or "/dev/dri" in mapped, name
    assert services["llama-cpp-hipblas"]["group_add"] == ["video", "render"]
    assert [d["source"] for d in services["llama-cpp-hipblas"]["devices"]] == ["/dev/kfd", "/dev/dri"]


def test_compose_profiles_and_names_choose_what_to_build() -> None:
    cpu = _compose("--profile", "cpu", "config", "--format", "json")["services"]
    assert set(cpu) == {f"{b}-cpu" for b in M.backends}
    llama = _compose("--profile", "llama-cpp", "config", "--format", "json")["services"]
    assert set(llama) == {f"llama-cpp-{bt}" for bt in CONTAINER_TYPES if own("llama-cpp", bt)}
    chosen = _compose("config", "--format", "json", "llama-cpp-cublas12", "whisper-vulkan")["services"]
    assert set(chosen) == {"llama-cpp-cublas12", "whisper-vulkan"}


# --- deploy/overlays/<build type>/ --------------------------------------------------------------------------


def test_an_overlay_per_container_build_type() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == sorted(CONTAINER_TYPES)


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    result = run([require_tool("kubectl"), "kustomize", str(folder)])
    assert result.returncode == 0, explain(result)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("bt", CONTAINER_TYPES)
def test_overlay_runs_the_build_types_images_and_requests_its_gpu(bt: str) -> None:
    kind = M.build_types[bt]
    docs = _kustomize(OVERLAYS / bt)
    base = _kustomize(ROOT / "deploy" / "k8s")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in base
    )
    _validate_k8s(docs)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(M.backends)
    for backend, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        uses = bt if own(backend, bt) else "cpu"
        assert container["image"] == f"localfleet/backends:{tag('latest', uses, backend)}", backend
        gpu = bool(kind.k8s_resource) and own(backend, bt)
        for side in ("requests", "limits"):
            held = container["resources"].get(side, {})
            device = {k: v for k, v in held.items() if k not in {"cpu", "memory", "ephemeral-storage"}}
            assert device == ({kind.k8s_resource: 1} if gpu else {}), f"{backend} {side}"
        tolerated = [t["key"] for t in pod.get("tolerations", [])]
        assert tolerated == ([kind.k8s_toleration] if gpu and kind.k8s_toleration else []), backend
