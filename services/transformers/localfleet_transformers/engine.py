"""The transformers engine: the only module that imports torch, transformers and sentence-transformers.

Imported at LoadModel. Plain Python in and out: texts, token ids, floats, dicts for chat messages.
Three kinds of text model: a sentence-transformers folder (its own pooling/normalisation pipeline), a plain
encoder (mean pooling over the last hidden state, as LocalAI's transformers backend does), and a causal
LM (generation with the model's chat template; embeddings by the same mean pooling). A MusicGen model
(config model_type musicgen or musicgen_melody) loads as the fourth kind, in music.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.utils import logging as hf_logging

from localfleet.cpus import cap_threads
from localfleet.errors import BadInput, EngineFailure, NotFound, Refused
from localfleet.llm import chat as chat_input
from localfleet.llm import chat_output
from localfleet.llm.chat import check_roles
from localfleet.llm.replies import TextStep
from localfleet.llm.sampling import Sampling
from localfleet.llm.stops import StopText
from localfleet.window import Window
from localfleet_transformers.music import FAMILIES, MusicModel, load_music

hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # progress bars in a log are noise

Kind = Literal["sentence-transformers", "encoder", "causal-lm", "musicgen"]
#: texts of an embedding batch share a forward pass while the longest is at most this many times the
#: shortest (or all are below SHORT_TEXT characters): padding to one long text would slow every short one
SIMILAR_LENGTH = 2
SHORT_TEXT = 256
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoadSpec:
    path: str
    kind: Kind | None = None  # None: picked by the folder's contents
    device: str = ""  # "" = cuda when available, else cpu
    dtype: str = ""  # "", float32, float16, bfloat16
    trust_remote_code: bool = False
    context_size: int = 0  # 0 = the model's own
    threads: int = 0


@dataclass
class _Progress:
    started: float = field(default_factory=time.perf_counter)
    first_token: float = 0.0
    tokens: int = 0


def load(spec: LoadSpec) -> TextModel | MusicModel:
    local = Path(spec.path)
    if local.is_absolute() and not local.exists():
        raise NotFound(f"model folder {spec.path!r} does not exist on this machine")
    if local.exists() and not local.is_dir():
        raise Refused(f"{spec.path!r} is a file; transformers models are folders (config.json, weights)")
    kind = _kind(spec, local)
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.threads > 0:
        torch.set_num_threads(cap_threads(spec.threads))
    common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if local.is_dir():
        common["local_files_only"] = True  # a local folder never reaches for the network
    dtype = _DTYPES.get(spec.dtype.lower()) if spec.dtype else None
    if spec.dtype and dtype is None:
        raise BadInput(f"DType {spec.dtype!r} is not one of {', '.join(_DTYPES)}")
    if kind == "musicgen":
        return load_music(spec.path, device, dtype, common)
    try:
        if kind == "sentence-transformers":
            st = SentenceTransformer(
                spec.path, device=device, model_kwargs={"dtype": dtype} if dtype else None, **common
            )
            return TextModel(
                kind,
                st.tokenizer,
                sentence_model=st.eval(),
                model=None,
                device=device,
                context_size=spec.context_size,
            )
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **common)
        loader: Any = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
        model = loader.from_pretrained(spec.path, dtype=dtype, **common).to(device).eval()
    except OSError as exc:  # transformers' way of saying a file or a hub repository is missing
        raise NotFound(
            f"cannot load {spec.path!r}: {exc}. Give a model folder on this machine (config.json, weights, "
            "tokenizer) or a model id already in the Hugging Face cache"
        ) from None
    return TextModel(
        kind, tokenizer, sentence_model=None, model=model, device=device, context_size=spec.context_size
    )


def _kind(spec: LoadSpec, local: Path) -> Kind:
    if spec.kind is not None:
        return spec.kind
    if (local / "modules.json").is_file():
        return "sentence-transformers"
    try:
        config = AutoConfig.from_pretrained(spec.path, local_files_only=local.is_dir())
    except OSError as exc:
        raise NotFound(f"cannot read the model config of {spec.path!r}: {exc}") from None
    if getattr(config, "model_type", "") in FAMILIES:
        return "musicgen"
    architectures = getattr(config, "architectures", None) or []
    return "causal-lm" if any(a.endswith("ForCausalLM") for a in architectures) else "encoder"


class TextModel:
    def __init__(
        self,
        kind: Kind,
        tokenizer: PreTrainedTokenizerBase,
        *,
        sentence_model: SentenceTransformer | None,
        model: Any,
        device: str,
        context_size: int,
    ) -> None:
        self.kind = kind
        self.tokenizer = tokenizer
        self.sentence_model = sentence_model
        self.model = model
        self.device = device
        own = _model_context(model if model is not None else sentence_model, tokenizer)
        self.context = min(own, context_size) if context_size > 0 else own
        # The tokens a text is truncated to: sentence-transformers keeps its own max_seq_length.
        self.window = Window(tokenizer, own if sentence_model is not None else self.context)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # batching needs padding; llama tokenizers have none
        self.name = type(model if model is not None else sentence_model).__name__

    @property
    def can_generate(self) -> bool:
        return self.kind == "causal-lm"

    def nbytes(self) -> int:
        module = self.model if self.model is not None else self.sentence_model
        return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0

    def close(self) -> None:
        self.model = None
        self.sentence_model = None

    # -- embeddings ------------------------------------------------------------------------------
    def embed(self, texts: list[str], stop: threading.Event) -> list[tuple[list[float], int]]:
        """One vector and its token count per text: texts of similar length share a forward pass."""
        rows: list[tuple[list[float], int]] = [([], 0)] * len(texts)
        for group in _similar_lengths(texts):
            if stop.is_set():
                raise EngineFailure("embedding batch stopped: every caller went away")
            for index, row in zip(group, self._embed([texts[i] for i in group]), strict=True):
                rows[index] = row
        return rows

    def _embed(self, texts: list[str]) -> list[tuple[list[float], int]]:
        with torch.inference_mode():
            if self.sentence_model is not None:
                features = self.sentence_model.preprocess(texts)
                mask = features["attention_mask"]
                features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
                vectors = self.sentence_model(features)["sentence_embedding"]
            else:
                encoded = self.tokenizer(
                    texts, padding=True, truncation=True, max_length=self.context, return_tensors="pt"
                )
                mask = encoded["attention_mask"]
                out = self.model(**encoded.to(self.device), output_hidden_states=True)
                hidden = out.hidden_states[-1]
                weights = mask.to(self.device).unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        rows: list[list[float]] = vectors.float().cpu().tolist()
        counts: list[int] = mask.sum(1).tolist()
        return list(zip(rows, counts, strict=True))

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    # -- generation ------------------------------------------------------------------------------
    @property
    def family(self) -> chat_output.Family:
        """How the chat template's model writes tool calls."""
        return chat_output.family_of(str(self.tokenizer.chat_template or ""))

    def render_chat(self, turn: chat_input.Turn) -> str:
        """The prompt for a chat turn, by the model's own chat template."""
        if not self.tokenizer.chat_template:
            raise BadInput(
                "UseTokenizerTemplate is set but this model has no chat template; send a templated Prompt"
            )
        check_roles(turn.messages)
        try:
            rendered = self.tokenizer.apply_chat_template(
                turn.messages, tools=turn.tools, add_generation_prompt=True, tokenize=False, **turn.variables
            )
        except Exception as exc:  # a template raising (e.g. roles out of order) is the request's fault
            raise BadInput(f"the model's chat template rejected the messages: {exc}") from None
        return str(rendered)

    def prompt_ids(self, prompt: str, templated: bool) -> list[int]:
        """Token ids of the prompt, checked against the context; a chat template already adds BOS."""
        if len(self.window.fit(prompt)) < len(prompt):  # told without encoding all of a huge prompt
            raise BadInput(
                f"the prompt is over {self.context} tokens, the model's context; shorten the prompt or "
                "load a model with a longer context"
            )
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
        if not ids:
            raise BadInput("the prompt is empty: send Prompt, or Messages with UseTokenizerTemplate")
        if len(ids) >= self.context:
            raise BadInput(
                f"the prompt is {len(ids)} tokens but the model's context is {self.context} tokens; "
                "shorten the prompt or load a model with a longer context"
            )
        return ids

    def generate(self, ids: list[int], sampling: Sampling, stop: threading.Event) -> Iterator[TextStep]:
        """Generate after `ids`, yielding text as the streamer finalises it; stops when `stop` is set."""
        halt = threading.Event()  # set by stop strings or by the consumer leaving
        progress = _Progress()
        streamer = _TokenStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        max_new = max(1, min(sampling.max_tokens, self.context - len(ids)))
        kwargs = self._generation_kwargs(sampling, max_new)
        input_ids = torch.tensor([ids], device=self.device)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Watch(stop, halt, progress, len(ids))]),
                        **kwargs,
                    )
            except BaseException as exc:
                failure.append(exc)
                streamer.end()  # type: ignore[no-untyped-call]  # wakes the reader

        if sampling.temperature > 0:  # process-wide RNG: generations on one model are serialised
            torch.manual_seed(sampling.seed) if sampling.seed is not None else torch.seed()
        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        held = StopText(sampling.stop)
        try:
            for text in streamer:
                out, matched = held.feed(text)
                if out:
                    yield TextStep(out, progress.tokens)
                if matched:
                    halt.set()
                    break
            else:
                if rest := held.flush():
                    yield TextStep(rest, progress.tokens)
        finally:
            halt.set()
            thread.join()
        if failure:
            raise EngineFailure(f"generation failed: {type(failure[0]).__name__}: {failure[0]}")
        done = time.perf_counter()
        first = progress.first_token or done
        yield TextStep(
            "",
            progress.tokens,
            "length" if progress.tokens >= max_new else "stop",
            prompt_ms=(first - progress.started) * 1e3,
            generation_ms=(done - first) * 1e3,
        )

    def _generation_kwargs(self, sampling: Sampling, max_new: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = max_new
        if sampling.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p if 0 < sampling.top_p < 1 else None,
                top_k=sampling.top_k if sampling.top_k > 0 else None,
            )
            if sampling.min_p > 0:
                kwargs["min_p"] = sampling.min_p
        if sampling.repeat_penalty != 1:
            kwargs["repetition_penalty"] = sampling.repeat_penalty
        return kwargs


class _TokenStreamer(TextIteratorStreamer):
    """Text as each token decodes, not per word as transformers' streamer does, for a prompt first token.

    Only a trailing incomplete character (U+FFFD while its bytes are split over tokens) is held back.
    """

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        if text.endswith("\ufffd"):
            return
        printable = text[self.print_len :]
        if text.endswith("\n"):  # as transformers does: a new line starts a new decode window
            self.token_cache, self.print_len = [], 0
        else:
            self.print_len += len(printable)
        if printable:
            self.on_finalized_text(printable)


class _Watch(StoppingCriteria):
    """Called after every generated token: counts it, and stops generation once asked to."""

    def __init__(self, stop: threading.Event, halt: threading.Event, progress: _Progress, prompt: int):
        self.stop = stop
        self.halt = halt
        self.progress = progress
        self.prompt = prompt

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if not self.progress.first_token:
            self.progress.first_token = time.perf_counter()
        self.progress.tokens = int(input_ids.shape[-1]) - self.prompt
        done = self.stop.is_set() or self.halt.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _similar_lengths(texts: list[str]) -> list[list[int]]:
    """Indexes of `texts` in groups of similar length, shortest first."""
    groups: list[list[int]] = []
    shortest = 0
    for index in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        size = len(texts[index])
        if not groups or size > max(shortest * SIMILAR_LENGTH, SHORT_TEXT):
            groups.append([])
            shortest = size
        groups[-1].append(index)
    return groups


def _model_context(model: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    if isinstance(model, SentenceTransformer):
        return int(model.max_seq_length or tokenizer.model_max_length)
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    length = tokenizer.model_max_length
    return int(length) if isinstance(length, int) and 0 < length < 10**9 else 2048
