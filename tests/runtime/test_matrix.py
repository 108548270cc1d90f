"""The build matrix (build-types.toml x services/*/pyproject.toml) and the installs it plans."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localfleet.environments import plan
from localfleet.matrix import Matrix, load, shell

ROOT = Path(__file__).resolve().parents[2]
BUILD_TYPES = ["cpu", "cublas12", "hipblas", "intel", "vulkan", "metal"]


@pytest.fixture(scope="module")
def m() -> Matrix:
    return load(ROOT)


def test_every_backend_folder_is_in_the_matrix_with_every_build_type(m: Matrix) -> None:
    folders = {p.name for p in (ROOT / "services").iterdir() if (p / "run.sh").exists()}
    assert {pkg.folder.name for pkg in m.backends.values()} == folders
    assert list(m.build_types) == BUILD_TYPES
    assert len(m.cells) == len(folders) * len(BUILD_TYPES)


def test_a_backend_that_forgets_a_build_type_is_named_with_the_fix(tmp_path: Path) -> None:
    shutil.copy(ROOT / "build-types.toml", tmp_path)
    folder = tmp_path / "services" / "local-store"
    folder.mkdir(parents=True)
    text = (ROOT / "services" / "local-store" / "pyproject.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("vulkan = ")]
    (folder / "pyproject.toml").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"no entry for build type 'vulkan'.*uses-cpu"):
        load(tmp_path)


def test_a_build_type_without_an_accelerator_path_is_the_cpu_build_and_says_why(m: Matrix) -> None:
    cell = m.build("local-store", "cublas12")
    assert cell.uses == "cpu"
    assert "CPU" in cell.reason
    assert cell.image_tag("latest") == "latest-cpu-local-store"
    assert cell.gallery_name() == "cpu-localfleet-local-store"
    own = m.build("transformers", "cublas12")
    assert (own.uses, own.reason) == ("cublas12", "")
    assert own.image_tag("master") == "master-gpu-nvidia-cuda-12-transformers"
    assert not m.build("transformers", "metal").container
    assert m.build("transformers", "metal").image_tag() == "latest-metal-darwin-arm64-transformers"


def test_unknown_names_are_refused_with_the_known_ones(m: Matrix) -> None:
    with pytest.raises(LookupError, match=r"unknown build type 'cuda'.*cublas12"):
        m.build("transformers", "cuda")
    with pytest.raises(LookupError, match=r"unknown backend 'tgi'.*local-store"):
        m.build("tgi", "cpu")


def test_torch_comes_from_the_build_types_index_when_it_answers(m: Matrix, tmp_path: Path) -> None:
    cell = m.build("transformers", "hipblas")
    steps = plan(cell, tmp_path / "v", m=m, editable=False, uv="uv")
    assert steps.args[steps.args.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/rocm6.4"
    offline = plan(cell, tmp_path / "v", m=m, editable=False, uv="uv", torch_index_reachable=False)
    assert "--extra-index-url" not in offline.args
    assert "does not answer" in offline.notes[0]


def test_compiled_engines_get_their_switches_and_build_from_source(m: Matrix, tmp_path: Path) -> None:
    cell = m.build("llama-cpp", "vulkan")
    steps = plan(cell, tmp_path / "v", m=m, editable=True, uv="uv")
    assert steps.env["CMAKE_ARGS"] == "-DGGML_VULKAN=on"
    assert steps.args[steps.args.index("--no-binary") + 1] == "llama-cpp-python"
    assert "libvulkan-dev" in cell.build_packages
    assert "libgomp1" in cell.runtime_packages  # the backend's own, kept for every build type
    assert m.build("whisper", "cublas12").build_env == {"GGML_CUDA": "1"}


def test_a_companion_compiles_with_its_own_cpu_switches(m: Matrix, tmp_path: Path) -> None:
    """huggingface's tests run llama.cpp's server: it is built portable there as in llama-cpp's own env
    (a native build took AMX kernels that crashed the server on the first completion)."""
    steps = plan(
        m.build("huggingface", "cpu"),
        tmp_path / "v",
        m=m,
        editable=True,
        uv="uv",
        with_backends=["llama-cpp"],
    )
    assert steps.build_env == {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
    assert steps.env["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"


def test_nvidia_builds_carry_nvml_for_gpu_memory_in_status(m: Matrix, tmp_path: Path) -> None:
    steps = plan(m.build("faster-whisper", "cublas12"), tmp_path / "v", m=m, editable=False, uv="uv")
    assert steps.args[0] == f"{ROOT / 'shared'}[nvidia]"
    cpu = plan(m.build("faster-whisper", "cpu"), tmp_path / "v", m=m, editable=False, uv="uv")
    assert cpu.args[0] == str(ROOT / "shared")


def test_pip_cannot_drop_a_dependency_so_it_is_refused_by_name(m: Matrix, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"drops onnxruntime.*needs uv"):
        plan(m.build("piper", "cublas12"), tmp_path / "v", m=m, editable=False, uv=None)


def test_the_gpu_build_of_an_onnx_engine_resolves_to_onnxruntime_gpu_alone(m: Matrix, tmp_path: Path) -> None:
    """The engines ask for `onnxruntime`; the cuda cell drops it (uv override) for onnxruntime-gpu."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    steps = plan(m.build("kokoro", "cublas12"), tmp_path / "v", m=m, editable=False, uv=uv)
    # Resolve for a Linux x86_64 GPU host without installing anything.
    compile_cmd = [uv, "pip", "compile", "--quiet", "--python-version", "3.11", "--no-header"]
    compile_cmd += ["--python-platform", "x86_64-manylinux_2_28", "-"]
    requirements = [a for a in steps.args if not a.startswith("--") and Path(a.split("[")[0]).is_dir()]
    overrides = steps.args[steps.args.index("--override") + 1]
    done = subprocess.run(
        [*compile_cmd, "--override", overrides],
        input="\n".join(requirements),
        capture_output=True,
        text=True,
        env=steps.env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pins = {line.split("==")[0] for line in done.stdout.splitlines() if "==" in line}
    assert "onnxruntime-gpu" in pins
    assert "onnxruntime" not in pins


def test_the_dockerfile_reads_a_cell_as_shell_assignments(m: Matrix) -> None:
    script = shell(m.build("llama-cpp", "intel")) + 'printf "%s|%s|%s" "$uses" "$no_binary" "$build_env"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    uses, no_binary, build_env = out.split("|")
    assert (uses, no_binary) == ("intel", "llama-cpp-python")
    exported = subprocess.run(
        ["sh", "-c", f'export {build_env}; printf %s "$CMAKE_ARGS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert exported == "-DGGML_SYCL=on -DCMAKE_C_COMPILER=icx -DCMAKE_CXX_COMPILER=icpx"
