"""What a backend implements: a thin servicer over its engine. Everything else is the runtime's.

A backend subclasses `Backend`, names itself, declares its typed `Options`, implements `load`/`unload`
(blocking; the runtime runs them in a worker thread), and defines async methods named after the RPCs it
serves (`async def StoresFind(self, request, call) -> StoresFindResult`; streaming RPCs are async
generators). Any RPC it does not define answers UNIMPLEMENTED, naming the backend and what it serves.

RPCs that must run fewer at once than `default_concurrency` allows (generations, each holding a KV
cache, beside embeddings admitted by the dozen) are put in a group by `limit_groups`, sized from the
LoadModel options by `group_limits()`. The runtime's admission enforces it: a call waits for its group
before it takes a slot, in arrival order and counted in the same bounded queue; a backend keeps no
semaphores of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from localfleet import memory
from localfleet.errors import BadInput
from localfleet.options import NoOptions

if TYPE_CHECKING:
    from localfleet.proto import backend_pb2 as pb


@dataclass(frozen=True)
class ModelRef:
    """The model LoadModel asked for, resolved by the runtime's rule."""

    name: str  # `Model` as the user wrote it: the identity later requests are checked against
    path: str  # `ModelFile` when that file exists, else `Model`
    model_dir: str  # `ModelPath`, the models directory ("" when not sent)
    type: str = ""  # `Type`: the model class or kind a backend is asked to load it as

    @classmethod
    def from_request(cls, request: pb.ModelOptions) -> ModelRef:
        use_file = bool(request.ModelFile) and os.path.exists(request.ModelFile)
        return cls(
            name=request.Model,
            path=request.ModelFile if use_file else request.Model,
            model_dir=request.ModelPath,
            type=request.Type,
        )

    def local_path(self) -> Path:
        """`path` on disk: as sent, or under the models directory when it is relative and not there."""
        path = Path(self.path)
        if not path.is_absolute() and self.model_dir and not _exists(path):
            path = Path(self.model_dir) / path
        return path

    def is_remote_id(self) -> bool:
        """`name` reads as a hub repository id (owner/name) and names nothing on disk here."""
        name = self.name
        return "/" in name and not name.startswith(("/", ".")) and not _exists(self.local_path())


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long or with a NUL in it
        return False


class Backend:
    """Base class of every backend's servicer."""

    #: the name users and core know it by (`localfleet serve <name>`, backends-index.yaml)
    name: ClassVar[str] = ""
    #: typed LoadModel options; unknown keys and wrong types fail LoadModel with a clear message
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: requests one loaded model runs at once unless LOCALFLEET_CONCURRENCY says otherwise
    default_concurrency: ClassVar[int] = 1
    #: RPC name -> the group whose smaller limit it shares, e.g. {"Predict": "max_generations",
    #: "PredictStream": "max_generations"}; name a group after the LoadModel option that sets it, since the
    #: queue-full message tells users to raise it
    limit_groups: ClassVar[Mapping[str, str]] = {}

    #: load() builds the new model before it lets go of the serving one, and a failed load leaves that one
    #: serving untouched: the runtime may then load beside it instead of unloading it first (a bad load
    #: then costs nothing), where `beside_refusal` finds room
    loads_beside: ClassVar[bool] = False

    def refuse(self, model: ModelRef) -> str | None:
        """A reason this backend cannot serve `model`, decided fast and without loading; None to accept.

        Core probes every backend with a model name when the model's config names none.
        """
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        """Load the model (blocking, in a worker thread). Return a short message for the Result."""
        raise NotImplementedError

    def beside_refusal(self, model: ModelRef, request: pb.ModelOptions) -> str | None:
        """Why `model` cannot be loaded beside the one serving now (blocking; called with one loaded), or
        None. By default: a backend that does not load beside, a model on a GPU (which rarely holds two),
        or too little free memory for both (the model's files and `working_bytes`)."""
        if not self.loads_beside:
            return f"{self.name} releases its model before loading another"
        if memory.gpu_in_use():
            return "the model serving now is on a GPU, which rarely holds two"
        return memory.room_beside(model.path, self.working_bytes(model, request))

    def working_bytes(self, model: ModelRef, request: pb.ModelOptions) -> int:
        """Memory `model` takes beyond its files once loaded (a KV cache), as far as known (blocking)."""
        return 0

    def group_limits(self, options: BaseModel) -> Mapping[str, int]:
        """Each group's limit (>= 1) for a model loaded with `options`; called by LoadModel before the
        current model is touched. By default the value of the LoadModel option each group is named after."""
        groups = set(self.limit_groups.values())
        missing = sorted(g for g in groups if not hasattr(options, g))
        if missing:
            raise ValueError(f"no LoadModel option sizes the group(s) {', '.join(missing)}")
        return {group: getattr(options, group) for group in groups}

    def unload(self) -> str:
        """Give the model's memory back (blocking, in a worker thread). Return a short message."""
        return "unloaded"

    def unable(self) -> str | None:
        """Why the loaded model cannot serve right now though it is loaded (a remote engine that is
        down), or None; Status then says ERROR. Called on the event loop: no blocking."""
        return None

    def memory(self) -> dict[str, int]:
        """Extra memory figures for Status, in bytes, beside the runtime's own (RSS, GPU)."""
        return {}

    def close(self) -> None:
        """At exit, after the last call: flush whatever must survive a restart (blocking)."""
        self.unload()


def beside_model(path: str, model_dir: str, field: str, *, folder: bool = False) -> str:
    """A file (or `folder`) LoadModel names beside the model (a LoRA adapter, a projector): relative to
    ModelPath unless absolute; BadInput naming `field` when it is not there."""
    resolved = path if os.path.isabs(path) or not model_dir else os.path.join(model_dir, path)
    if not (os.path.isdir(resolved) if folder else os.path.isfile(resolved)):
        raise BadInput(f"{field} {'folder' if folder else 'file'} not found: {resolved}")
    return resolved


def lora_adapters(
    request: pb.ModelOptions, model_dir: str, *, folders: bool = False
) -> tuple[tuple[str, float], ...]:
    """(path, scale) of every LoRA adapter a LoadModel names: `LoraAdapter` with `LoraScale`, then
    `LoraAdapters` with `LoraScales`; a scale of 0 (not sent) is 1.0."""
    named = [("LoraAdapter", request.LoraAdapter, request.LoraScale)] if request.LoraAdapter else []
    scales = list(request.LoraScales)
    for i, adapter in enumerate(request.LoraAdapters):
        named.append((f"LoraAdapters[{i}]", adapter, scales[i] if i < len(scales) else 0.0))
    return tuple(
        (beside_model(path, model_dir, field, folder=folders), scale or 1.0) for field, path, scale in named
    )


#: single-file formats other backends serve; core probes every backend with a model name
OTHER_FORMATS = (".gguf", ".ggml", ".onnx", ".bin", ".pt", ".pth")


def folder_refusal(model: ModelRef, what: str, markers: tuple[str, ...] = ("config.json",)) -> str | None:
    """Why `model` is not a Hugging Face model folder or hub id (`what`: "a transformers model"), or None.

    For backends that load folders: fast file checks only, for `Backend.refuse`.
    """
    if "://" in model.name:
        return "it serves model folders and Hugging Face model ids, not URLs"
    path = Path(model.path)
    if path.suffix.lower() in OTHER_FORMATS or path.is_file():
        return f"{model.path!r} is a single file; {what} is a folder (config.json, weights)"
    if path.is_absolute() and not path.exists():
        return f"model folder {model.path!r} does not exist on this machine"
    if path.is_dir() and not any((path / marker).is_file() for marker in markers):
        return f"{model.path!r} has no config.json: it is not a transformers model folder"
    return None
