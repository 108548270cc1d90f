"""`localfleet call ADDR <inference command>` as a person runs it: the real CLI, in its own process, against
real backends served on loopback with the cheapest model each (the backends' own test fixtures)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from localfleet.call import Call
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_silero_vad.servicer import SileroVAD
from tests.audio_fixtures import SENTENCE, Clip, clips_dir, speech_clip, vad_clip
from tests.piper.speech_checks import roots, whisper
from tests.piper.test_servicer import piper
from tests.rerankers.test_rerank import DOCUMENTS, QUERY, cross_encoder, reranker
from tests.runtime.workbench import Workbench
from tests.transformers.conftest import minilm, tiny_llama
from tests.transformers.test_embedding import BABY, BREAD, FOOD, embedder
from tests.transformers.test_generation import CHAT, PROMPT, llm

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = [  # fixtures of the backends' tests, served here as they are there
    "clips_dir",
    "cross_encoder",
    "embedder",
    "llm",
    "minilm",
    "piper",
    "reranker",
    "roots",
    "speech_clip",
    "tiny_llama",
    "vad_clip",
    "whisper",
]

TOKEN = "cli-token"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(addr: str, *args: str, token: str = "", cwd: Path | None = None) -> Ran:
    """`localfleet call ADDR ARGS...` in a child process, with $LOCALAI_GRPC_AUTH_TOKEN set to `token`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localfleet",
        "call",
        addr,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOCALAI_GRPC_AUTH_TOKEN": token},
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def failed(ran: Ran, *needles: str) -> None:
    """One readable line on stderr, nothing on stdout, exit status 1."""
    assert ran.code == 1, ran
    assert ran.out == "", ran
    [line] = ran.err.splitlines()
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


# -- embed, tokenize, rerank ---------------------------------------------------------------------
async def test_embed_prints_a_json_vector_a_text_with_minilms_similarities(embedder: Served) -> None:
    ran = await cli(embedder.addr, "embed", FOOD, BREAD, BABY)
    assert ran.code == 0, ran.err
    food, bread, baby = [json.loads(line) for line in ran.lines]
    assert len(food) == len(bread) == len(baby) == 384
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)  # as tests/transformers asserts
    assert cosine(food, baby) == pytest.approx(-0.1050, abs=0.001)
    direct = await embedder.client.backend.Embedding(pb.PredictOptions(Embeddings=FOOD))
    assert np.asarray(food, np.float32).tolist() == list(direct.embeddings)  # float32 round-trips exactly
    dims = await cli(embedder.addr, "embed", FOOD, BABY, "--dims")
    assert dims.lines == ["384", "384"]


async def test_tokenize_prints_the_models_own_token_ids(llm: Served, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    ran = await cli(llm.addr, "tokenize", PROMPT)
    assert ran.code == 0, ran.err
    expected = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)(PROMPT)["input_ids"]
    assert json.loads(ran.out) == expected
    assert len(expected) > 3


async def test_rerank_prints_the_ranking_best_first_and_honours_top_n(reranker: Served) -> None:
    ran = await cli(reranker.addr, "rerank", QUERY, *DOCUMENTS)
    assert ran.code == 0, ran.err
    ranked = [json.loads(line) for line in ran.lines]
    direct = await reranker.client.backend.Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS))
    assert [r["index"] for r in ranked] == [r.index for r in direct.results]
    assert [r["relevance_score"] for r in ranked] == pytest.approx(
        [r.relevance_score for r in direct.results], abs=1e-6
    )
    assert sorted(r["index"] for r in ranked) == list(range(len(DOCUMENTS)))
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranked)
    scores = [r["relevance_score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1
    best_two = await cli(reranker.addr, "rerank", QUERY, *DOCUMENTS, "--top-n", "2")
    assert [json.loads(line) for line in best_two.lines] == ranked[:2]


# -- predict -------------------------------------------------------------------------------------
async def test_predict_prints_the_generated_text_and_passes_the_sampling_flags(llm: Served) -> None:
    async def direct(**fields: Any) -> str:
        reply = await llm.client.backend.Predict(pb.PredictOptions(**fields))
        return str(reply.message.decode(errors="replace"))

    greedy = await cli(llm.addr, "predict", PROMPT, "--tokens", "16")
    assert greedy.code == 0, greedy.err
    assert greedy.out == await direct(Prompt=PROMPT, Tokens=16) + "\n"
    assert greedy.out.strip()

    sampled = ("--tokens", "30", "--temperature", "1.0", "--seed", "5")
    whole, streamed = await asyncio.gather(
        cli(llm.addr, "predict", PROMPT, *sampled), cli(llm.addr, "predict", PROMPT, *sampled, "--stream")
    )
    expected = await direct(Prompt=PROMPT, Tokens=30, Temperature=1.0, Seed=5)
    assert whole.out == streamed.out == expected + "\n"
    assert expected != await direct(Prompt=PROMPT, Tokens=30, Temperature=1.0, Seed=6)

    messages = [f"--message={m.role}:{m.content}" for m in CHAT]
    chat = await cli(llm.addr, "predict", *messages, "--tokens", "12", "--stream")
    assert chat.code == 0, chat.err
    assert chat.out == await direct(UseTokenizerTemplate=True, Messages=CHAT, Tokens=12) + "\n"
    assert chat.out != greedy.out


class ByteEcho(Workbench):
    """Streams the prompt back one byte a chunk, as llama.cpp may cut a character across chunks."""

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        for count, byte in enumerate(request.Prompt.encode(), 1):
            yield pb.Reply(message=bytes([byte]), tokens=count)


async def test_a_stream_joins_characters_cut_across_chunks() -> None:
    text = "naïve café, 日本語, 🎉!"
    async with serving(ByteEcho()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model="echo"))).success
        ran = await cli(served.addr, "predict", text, "--stream")
    assert ran.code == 0, ran.err
    assert ran.out == text + "\n"


# -- speech --------------------------------------------------------------------------------------
SEGMENT = re.compile(r"\[\s*([\d.]+)s ->\s*([\d.]+)s\] (.*)")


async def test_transcribe_prints_segments_in_seconds_then_the_text(
    whisper: Served, speech_clip: Clip
) -> None:
    ran = await cli(whisper.addr, "transcribe", str(speech_clip.path), "--language", "en")
    assert ran.code == 0, ran.err
    *segment_lines, last = ran.lines
    assert last == f"text: {SENTENCE}"
    matches = [SEGMENT.fullmatch(line) for line in segment_lines]
    assert segment_lines
    assert all(matches), segment_lines
    spans = [(float(m[1]), float(m[2])) for m in matches if m]
    assert " ".join(m[3] for m in matches if m) == SENTENCE
    # Seconds, not nanoseconds: inside the clip, and the last one ends near its end.
    assert all(0 <= start < end <= speech_clip.seconds + 0.05 for start, end in spans), spans
    assert spans[-1][1] > 0.6 * speech_clip.seconds
    # A relative path is the caller's: sent made absolute.
    relative = await cli(
        whisper.addr, "transcribe", speech_clip.path.name, "--json", cwd=speech_clip.path.parent
    )
    assert relative.code == 0, relative.err
    data = json.loads(relative.out)
    assert data["text"] == SENTENCE
    assert data["language"] == "en"
    assert data["duration"] == pytest.approx(speech_clip.seconds, abs=0.05)
    times = [t for s in data["segments"] for t in (s["start"], s["end"])]
    assert times == pytest.approx([t for span in spans for t in span], abs=0.006)


async def test_tts_writes_a_wav_that_soundfile_reads_and_whisper_hears(
    piper: Served, whisper: Served, roots: Path
) -> None:
    import soundfile  # type: ignore[import-untyped]

    text = "The quick brown fox jumps over the lazy dog."
    dst = roots / "fox.wav"
    ran = await cli(piper.addr, "tts", text, "--dst", str(dst))
    assert ran.code == 0, ran.err
    assert ran.out == f"wrote {dst}\n"
    samples, rate = soundfile.read(dst, dtype="float32")
    assert rate == 22050
    assert samples.ndim == 1
    assert 1.0 < len(samples) / rate < 6.0
    assert float(np.abs(samples).max()) > 0.1
    heard = await cli(whisper.addr, "transcribe", str(dst), "--json")
    assert words(json.loads(heard.out)["text"]) == words(text)
    unknown = await cli(piper.addr, "tts", text, "--dst", str(dst), "--voice", "nobody")
    failed(unknown, "unknown voice 'nobody'")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded_vad() -> AsyncIterator[Served]:
    """silero-vad behind a bearer token, not loaded yet."""
    async with serving(SileroVAD(), auth_token=TOKEN) as served:
        yield served


async def test_vad_sends_the_token_and_prints_speech_segments_in_seconds(
    guarded_vad: Served, vad_clip: Clip, speech_clip: Clip
) -> None:
    addr, clip = guarded_vad.addr, str(vad_clip.path)
    failed(await cli(addr, "vad", clip), "UNAUTHENTICATED")
    failed(
        await cli(addr, "vad", clip, token=TOKEN),
        "error: FAILED_PRECONDITION: no model loaded; call LoadModel first",
    )
    # Piper pauses at the comma: a longer minimum silence keeps the sentence one segment.
    loaded = await cli(addr, "--token", TOKEN, "load", "silero-vad", "--option", "min_silence_ms:500")
    assert loaded.code == 0, loaded.err
    ran = await cli(addr, "vad", clip, "--token", TOKEN)
    assert ran.code == 0, ran.err
    [segment] = [json.loads(line) for line in ran.lines]
    assert segment["start"] == pytest.approx(vad_clip.speech[0], abs=0.3)
    assert segment["end"] == pytest.approx(vad_clip.speech[1], abs=0.3)
    # Piper's own 22.05 kHz file: resampled to 16 kHz here, so its times are still seconds of the clip.
    resampled = await cli(addr, "vad", str(speech_clip.path), token=TOKEN)
    assert resampled.code == 0, resampled.err
    spans = [json.loads(line) for line in resampled.lines]
    assert spans
    assert spans[0]["start"] < 0.5
    assert speech_clip.seconds - 1.0 < spans[-1]["end"] <= speech_clip.seconds + 0.01


# -- errors --------------------------------------------------------------------------------------
async def test_errors_are_one_line_and_exit_1(embedder: Served, whisper: Served, tmp_path: Path) -> None:
    runs = await asyncio.gather(
        cli(embedder.addr, "predict", "hello"),
        cli(embedder.addr, "predict"),
        cli(embedder.addr, "predict", "--message", "no role"),
        cli(embedder.addr, "embed", ""),
        cli(whisper.addr, "transcribe", str(tmp_path / "missing.wav")),
        cli(whisper.addr, "vad", str(tmp_path / "missing.wav")),
        cli("127.0.0.1:1", "tokenize", "hello", "--timeout", "2"),
    )
    cannot_generate, nothing, bad_message, empty, missing, unreadable, unreachable = runs
    failed(cannot_generate, "INVALID_ARGUMENT", "cannot generate")
    failed(nothing, "predict needs a prompt or --message")
    failed(bad_message, "must be ROLE:CONTENT")
    failed(empty, "INVALID_ARGUMENT", "Embeddings")
    failed(missing, "NOT_FOUND", "missing.wav")
    failed(unreadable, "cannot read audio file", "missing.wav")
    failed(unreachable, "cannot reach 127.0.0.1:1")


async def test_a_backend_that_does_not_answer_in_time_is_named_with_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        ran = await cli(addr, "tokenize", "hello", "--timeout", "1")
    failed(ran, f"{addr} did not answer within 1 s")
