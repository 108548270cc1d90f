"""whisper.cpp through pywhispercpp: the only module that imports it. Plain types in and out.

whisper.cpp decodes a whole file in one native call (which releases the GIL). Segments stream out of
it through its new-segment callback, and its abort callback is how a caller that left stops it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import _pywhispercpp as pw
import numpy as np
from pywhispercpp import utils
from pywhispercpp.model import Model

from localfleet.audio import SAMPLE_RATE, Asked, Segment, Transcription, Word
from localfleet.cpus import cap_threads, usable
from localfleet.errors import EngineFailure, Refused

_CENTISECOND = 0.01  # whisper.cpp's time unit
_DONE = object()


def resolve(name: str, models_dir: str) -> str:
    """A model file: a path, a file in the models dir, or a ggml model name pywhispercpp downloads."""
    try:
        path = utils.resolve_model_path(name, models_dir or None)
    except Exception as exc:  # no network, unknown name: say which
        raise Refused(f"cannot find or download whisper.cpp model {name!r}: {exc}") from None
    if not path or not os.path.isfile(path):
        raise Refused(f"cannot find or download whisper.cpp model {name!r}")
    return str(path)


class Transcriber:
    def __init__(self, path: str, threads: int) -> None:
        self.threads = cap_threads(threads) or min(4, usable())
        self.model = Model(
            path,
            redirect_whispercpp_logs_to=None,
            print_progress=False,
            print_realtime=False,
            n_threads=self.threads,
        )
        self._ctx: Any = vars(self.model).get("_ctx")  # the whisper.cpp context, for token data
        if self._ctx is None:
            raise Refused(f"whisper.cpp could not load {path!r}")
        self.multilingual = bool(pw.whisper_is_multilingual(self._ctx))
        self.languages = set(Model.available_languages()) if self.multilingual else {"en"}
        self._eot = int(pw.whisper_token_eot(self._ctx))

    def start(self, audio: np.ndarray, asked: Asked) -> tuple[Transcription, Iterator[Segment]]:
        language = asked.language
        threads = cap_threads(asked.threads) or self.threads
        if not language:
            language = "en"
            if self.multilingual:
                (language, _), _ = self.model.auto_detect_language(audio, n_threads=threads)
        params: dict[str, Any] = {
            "language": language,
            "translate": asked.translate,
            "initial_prompt": asked.prompt,
            "temperature": asked.temperature,
            "n_threads": threads,
            "token_timestamps": asked.words,
            "no_context": True,
        }
        return Transcription(language, len(audio) / SAMPLE_RATE), self._segments(audio, params)

    def _segments(self, audio: np.ndarray, params: dict[str, Any]) -> Iterator[Segment]:
        """Run whisper.cpp in its own thread; yield each segment as its callback hands it over."""
        out: queue.Queue[object] = queue.Queue()
        abort = threading.Event()
        words = bool(params["token_timestamps"])
        count = 0

        def on_segment(segment: Any) -> None:
            nonlocal count
            out.put(self._segment(count, segment, words))
            count += 1

        def run() -> None:
            try:
                self.model.transcribe(
                    audio, new_segment_callback=on_segment, abort_callback=abort.is_set, **params
                )
            except BaseException as exc:
                out.put(exc)
            finally:
                out.put(_DONE)

        worker = threading.Thread(target=run, name="whisper.cpp", daemon=True)
        worker.start()
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise EngineFailure(f"whisper.cpp failed: {item}") from item
                assert isinstance(item, Segment)
                yield item
        finally:
            abort.set()  # a consumer that left: whisper.cpp stops at its next check
            worker.join()

    def _segment(self, index: int, segment: Any, words: bool) -> Segment:
        tokens: list[int] = []
        spans: list[tuple[bytes, float, float]] = []  # bytes, not text: a character may span tokens
        for j in range(pw.whisper_full_n_tokens(self._ctx, index)):
            token = int(pw.whisper_full_get_token_id(self._ctx, index, j))
            if token >= self._eot:  # timestamps and other special tokens
                continue
            tokens.append(token)
            if words:
                data = pw.whisper_full_get_token_data(self._ctx, index, j)
                piece = bytes(pw.whisper_token_to_bytes(self._ctx, token))
                start, end = data.t0 * _CENTISECOND, data.t1 * _CENTISECOND
                if spans and not piece.startswith(b" "):  # the word goes on in this token
                    text, first, last = spans[-1]
                    spans[-1] = (text + piece, first, max(last, end))
                else:
                    spans.append((piece, start, end))
        return Segment(
            id=index,
            start=segment.t0 * _CENTISECOND,
            end=segment.t1 * _CENTISECOND,
            text=segment.text,
            tokens=tokens,
            words=[
                Word(start, end, text.decode("utf-8", errors="replace"))
                for text, start, end in spans
                if text.strip()
            ],
        )
