"""mlx: text generation, chat templates, tool calls, tokenization and embeddings on MLX through mlx-lm.

A thin servicer over `engine.Engine` (mlx and mlx-lm, imported at LoadModel). One generation at a time
(`default_concurrency` 1: mlx's random generator is process-wide); the runtime queues the rest in order.
Generation runs in a worker thread that checks the call's stop flag between tokens, so a cancelled or
disconnected stream stops within one token and the next request is served at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import Backend, ModelRef, folder_refusal
from localfleet.call import Call
from localfleet.errors import BadInput
from localfleet.llm import chat as chat_input
from localfleet.llm import replies
from localfleet.llm import sampling as llm_sampling
from localfleet.llm.chat_output import ChatReplies, opens_reasoning
from localfleet.llm.replies import TextStep
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_mlx.engine import Engine


class MlxOptions(BackendOptions):
    """LoadModel `Options` (`key:value`) beside the ModelOptions fields."""

    #: tokens to generate when a request's `Tokens` is 0
    max_tokens: int = Field(512, ge=1)
    #: a Jinja chat template that replaces the tokenizer's (for a model without one, or a better one)
    chat_template: str | None = None


@dataclass(frozen=True)
class Job:
    """A request made ready in a worker thread: the prompt's ids, the sampling, how to read the output."""

    ids: list[int]
    sampling: llm_sampling.Sampling
    chat: ChatReplies | None  # its output's chat deltas; None for a plain prompt


class Mlx(Backend):
    name = "mlx"
    Options = MlxOptions
    default_concurrency = 1  # mlx's random state is process-wide: one generation at a time, in order
    loads_beside = True  # load() builds the new engine before it closes the old

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._options = MlxOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        reason = folder_refusal(model, "an MLX model")
        if reason is None:
            reason = hub.refusal(model.path)  # not here, and not fetchable: say so now, not after retries
        return reason

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, MlxOptions)
        from localfleet_mlx.engine import Engine, LoadSpec  # mlx: imported with the first model

        engine = Engine(
            LoadSpec(
                path=model.path,
                context_size=request.ContextSize,
                trust_remote_code=request.TrustRemoteCode,
                chat_template=options.chat_template or "",
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
        return {"weights": engine.nbytes()} if engine is not None else {}

    def engine(self) -> Engine:
        assert self._engine is not None  # the runtime admits requests only while a model is loaded
        return self._engine

    # -- generation ------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        engine = self.engine()
        job = await call.run(self._job, engine, request)
        return await replies.whole(self._steps(engine, job, call), job.chat, len(job.ids))

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        engine = self.engine()
        job = await call.run(self._job, engine, request)
        async for reply in replies.stream(self._steps(engine, job, call), job.chat, len(job.ids)):
            yield reply

    def _steps(self, engine: Engine, job: Job, call: Call) -> AsyncIterator[TextStep]:
        return replies.counted(call.iterate(engine.generate, job.ids, job.sampling, call.stop), call)

    def _job(self, engine: Engine, request: pb.PredictOptions) -> Job:
        """Render, tokenize and check a request (worker thread): every bad input fails here, fast."""
        sampling = llm_sampling.sampling(request, self._options.max_tokens)
        turn = chat_input.turn(request)
        if turn is not None:
            text = engine.render(
                turn.messages,
                tools=turn.tools,
                tool_choice=turn.tool_choice,
                variables=turn.variables,
            )
        else:
            text = request.Prompt
        ids = engine.prompt_ids(text, templated=turn is not None)
        if turn is None:
            return Job(ids, sampling, None)
        chat = ChatReplies(engine.family, tools=bool(turn.tools), reasoning_open=opens_reasoning(text))
        return Job(ids, sampling, chat)

    # -- embeddings and tokens ----------------------------------------------------------------------
    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        text = request.Embeddings or request.Prompt
        if not text:
            raise BadInput("the text to embed is empty; send some text (PredictOptions.Embeddings)")
        vector, count = await call.run(self.engine().embed, text)
        return pb.EmbeddingResult(
            embeddings=vector,
            dim=len(vector),
            tokens=count,
            prompt_tokens=count,
            layout=pb.EMBEDDING_LAYOUT_FINAL,
        )

    async def TokenizeString(self, request: pb.PredictOptions, call: Call) -> pb.TokenizationResponse:
        """Prompt's tokens (BOS added as Predict adds it); with UseTokenizerTemplate and Messages, exactly
        the tokens Predict would feed the model."""
        engine = self.engine()
        if request.UseTokenizerTemplate and request.Messages:
            tokens = (await call.run(self._job, engine, request)).ids
        else:
            tokens = await call.run(engine.tokenize, request.Prompt)
        return pb.TokenizationResponse(length=len(tokens), tokens=tokens)
