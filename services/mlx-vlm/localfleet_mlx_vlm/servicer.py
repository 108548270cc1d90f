"""mlx-vlm: vision-language models on MLX through mlx-vlm: text and images in, text out.

A thin servicer over `engine.Engine` (mlx, mlx-vlm and Pillow, imported at LoadModel). One generation
at a time (`default_concurrency` 1: mlx's random generator is process-wide); the runtime queues the
rest in order. Generation runs in a worker thread that checks the call's stop flag between tokens, so a
cancelled or disconnected stream stops within one token.

`PredictOptions.Images` are base64 (LocalAI core sends raw base64; a data URI works too) or, where the
string names a readable file inside LOCALFLEET_PATH_ROOTS, that file's path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import Backend, ModelRef, folder_refusal
from localfleet.call import Call
from localfleet.llm import chat as chat_input
from localfleet.llm import replies
from localfleet.llm import sampling as llm_sampling
from localfleet.llm.chat_output import ChatReplies, opens_reasoning
from localfleet.llm.images import read_images
from localfleet.llm.replies import TextStep
from localfleet.options import BackendOptions
from localfleet.paths import PathPolicy
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_mlx_vlm.engine import Engine, Prompt


class MlxVlmOptions(BackendOptions):
    """LoadModel `Options` (`key:value`) beside the ModelOptions fields."""

    #: tokens to generate when a request's `Tokens` is 0
    max_tokens: int = Field(512, ge=1)


@dataclass(frozen=True)
class Job:
    """A request made ready in a worker thread: its prompt with images, the sampling, how to read it."""

    prompt: Prompt
    sampling: llm_sampling.Sampling
    chat: ChatReplies | None  # its output's chat deltas; None for a plain prompt


class MlxVlm(Backend):
    name = "mlx-vlm"
    Options = MlxVlmOptions
    default_concurrency = 1  # mlx's random state is process-wide: one generation at a time, in order
    loads_beside = True  # load() builds the new engine before it closes the old

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._options = MlxVlmOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        reason = folder_refusal(model, "an MLX vision-language model")
        if reason is None:
            reason = hub.refusal(model.path)  # not here, and not fetchable: say so now, not after retries
        return reason

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, MlxVlmOptions)
        from localfleet_mlx_vlm.engine import Engine, LoadSpec  # mlx: imported with the first model

        engine = Engine(
            LoadSpec(
                path=model.path,
                context_size=request.ContextSize,
                trust_remote_code=request.TrustRemoteCode,
            )
        )
        old, self._engine, self._options = self._engine, engine, options
        if old is not None:
            old.close()
        return engine.describe()

    def unload(self) -> str:
        engine, self._engine = self._engine, None
        if engine is None:
            return "no model loaded"
        engine.close()
        return f"unloaded {engine.spec.path}"

    def memory(self) -> dict[str, int]:
        engine = self._engine
        return {"weights": engine.nbytes()} if engine is not None and engine.model is not None else {}

    def engine(self) -> Engine:
        assert self._engine is not None  # the runtime admits requests only while a model is loaded
        return self._engine

    # -- generation ------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        return await replies.whole(self._steps(engine, job, call), job.chat, job.prompt.tokens)

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        async for reply in replies.stream(self._steps(engine, job, call), job.chat, job.prompt.tokens):
            yield reply

    def _steps(self, engine: Engine, job: Job, call: Call) -> AsyncIterator[TextStep]:
        return replies.counted(call.iterate(engine.generate, job.prompt, job.sampling, call.stop), call)

    def _job(self, engine: Engine, request: pb.PredictOptions, paths: PathPolicy) -> Job:
        """Read images, render, tokenize and check a request (worker thread): bad input fails here, fast."""
        sampling = llm_sampling.sampling(request, self._options.max_tokens)
        images = read_images(list(request.Images), paths)
        turn = chat_input.turn(request)
        if turn is not None:
            text = engine.render(
                turn.messages,
                images=len(images),
                tools=turn.tools,
                tool_choice=turn.tool_choice,
                variables=turn.variables,
            )
        else:
            text = request.Prompt
        prompt = engine.prompt(text, images)
        if turn is None:
            return Job(prompt, sampling, None)
        chat = ChatReplies(engine.family, tools=bool(turn.tools), reasoning_open=opens_reasoning(text))
        return Job(prompt, sampling, chat)

    # -- tokens ------------------------------------------------------------------------------------
    async def TokenizeString(self, request: pb.PredictOptions, call: Call) -> pb.TokenizationResponse:
        """Prompt's tokens as Predict tokenizes a text-only prompt; with UseTokenizerTemplate and
        Messages (and Images), exactly the tokens Predict would feed the model, image tokens expanded."""
        engine = self.engine()
        if (request.UseTokenizerTemplate and request.Messages) or request.Images:
            prompt = (await call.run(self._job, engine, request, call.paths)).prompt
            tokens = [int(t) for t in prompt.ids.reshape(-1).tolist()]
        else:
            tokens = await call.run(engine.tokenize, request.Prompt)
        return pb.TokenizationResponse(length=len(tokens), tokens=tokens)
