"""The inference commands of `localfleet call`: predict, embed, tokenize, rerank, transcribe, tts, vad.

Data comes out as JSON, one value a line (a vector per text, the token ids, a ranked document or a speech
segment per line); generated and transcribed text comes out as text. File paths that the backend opens
(transcribe's audio file, tts's --dst) are sent made absolute: they must exist on the backend's file
system (the same machine, or a volume shared at the same path). vad reads its file here and sends samples.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localfleet.cli.call import Handler
    from localfleet.client import Client

#: seconds an inference call may take unless --timeout says otherwise (a long generation or recording)
TIMEOUT = 300.0
#: what VAD takes: mono float32 samples in [-1, 1] at 16 kHz
VAD_RATE = 16_000


def add_commands(command: Callable[[str, Handler, str], argparse.ArgumentParser]) -> None:
    """Add the inference commands through `command(name, handler, help)` of `localfleet.cli.call`."""
    predict = command(
        "predict", _predict, "Predict: generate text from a prompt or chat messages (PredictStream: --stream)"
    )
    predict.add_argument("prompt", nargs="?", help="the prompt, sent as is (no chat template)")
    predict.add_argument(
        "--message",
        action="append",
        default=[],
        metavar="ROLE:CONTENT",
        help="a chat message (e.g. 'user:Hello'), repeatable; the model's chat template renders them",
    )
    predict.add_argument("--tokens", type=int, default=0, help="most tokens to generate (0: backend default)")
    predict.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    predict.add_argument("--seed", type=int, default=0, help="sampling seed")
    predict.add_argument("--stream", action="store_true", help="print the text as it is generated")

    embed = command("embed", _embed, "Embedding: one vector per text, as a JSON list a line")
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="a text to embed")
    embed.add_argument("--dims", action="store_true", help="print each vector's dimension, not the vector")

    tokenize = command("tokenize", _tokenize, "TokenizeString: the token ids of a text, as a JSON list")
    tokenize.add_argument("text", help="the text to tokenize")

    rerank = command(
        "rerank", _rerank, "Rerank: the documents by relevance to the query, a JSON object a line, best first"
    )
    rerank.add_argument("query", help="the query")
    rerank.add_argument("documents", nargs="+", metavar="DOCUMENT", help="a document to rank")
    rerank.add_argument("--top-n", type=int, default=0, help="keep the best N (0: all)")

    transcribe = command(
        "transcribe", _transcribe, "AudioTranscription: timed segments (seconds), then the text"
    )
    transcribe.add_argument(
        "audio", type=os.path.abspath, help="the audio file, on the backend's file system"
    )
    transcribe.add_argument("--language", default="", help="spoken language, e.g. en (default: detected)")
    transcribe.add_argument("--translate", action="store_true", help="translate into English")
    transcribe.add_argument("--json", action="store_true", help="print one JSON object instead")

    tts = command("tts", _tts, "TTS: speak a text into a WAV file the backend writes")
    tts.add_argument("text", help="the text to speak")
    tts.add_argument(
        "--dst",
        required=True,
        type=os.path.abspath,
        help="the WAV file to write, on the backend's file system",
    )
    tts.add_argument("--voice", default="", help="a voice (default: the loaded one)")
    tts.add_argument("--language", default=None, help="pick a voice that speaks this language")

    vad = command("vad", _vad, "VAD: speech segments in seconds, a JSON object a line")
    vad.add_argument("audio", help="an audio file (WAV, FLAC, ...): read here, sent as 16 kHz mono samples")

    for cmd in (predict, embed, tokenize, rerank, transcribe, tts, vad):
        cmd.set_defaults(default_timeout=TIMEOUT)


async def _predict(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    if bool(args.prompt) == bool(args.message):
        raise ValueError("predict needs a prompt or --message ROLE:CONTENT (one or more), not both")
    request = pb.PredictOptions(
        Prompt=args.prompt or "",
        Tokens=args.tokens,
        Temperature=args.temperature,
        Seed=args.seed,
        UseTokenizerTemplate=bool(args.message),
        Messages=[pb.Message(role=role, content=content) for role, content in map(_message, args.message)],
    )
    if not args.stream:
        reply = await client.backend.Predict(request, metadata=client.metadata, timeout=timeout)
        print(reply.message.decode(errors="replace"))
        return 0
    # A chunk may end inside a UTF-8 character: decode incrementally, printing whole characters only.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    printed = False
    try:
        async with client.backend.PredictStream.open(metadata=client.metadata, timeout=timeout) as stream:
            await stream.send_message(request, end=True)
            async for chunk in stream:
                text = decoder.decode(chunk.message)
                if text:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                    printed = True
    except BaseException:
        if printed:  # end the line of text cut short, so the error stands on a line of its own
            print(flush=True)
        raise
    print(decoder.decode(b"", final=True))
    return 0


def _message(text: str) -> tuple[str, str]:
    role, sep, content = text.partition(":")
    if not sep or not role.strip():
        raise ValueError(f"--message {text!r} must be ROLE:CONTENT, e.g. 'user:Hello'")
    return role.strip(), content


async def _embed(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    # One call per text, as LocalAI core sends them; at once, so a batching backend can gather them.
    embedding = client.backend.Embedding
    results = await asyncio.gather(
        *(
            embedding(pb.PredictOptions(Embeddings=t), metadata=client.metadata, timeout=timeout)
            for t in args.texts
        )
    )
    for result in results:
        print(len(result.embeddings) if args.dims else json.dumps([_f32(x) for x in result.embeddings]))
    return 0


async def _tokenize(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.PredictOptions(Prompt=args.text)
    result = await client.backend.TokenizeString(request, metadata=client.metadata, timeout=timeout)
    print(json.dumps(list(result.tokens)))
    return 0


async def _rerank(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.RerankRequest(query=args.query, documents=args.documents, top_n=args.top_n)
    result = await client.backend.Rerank(request, metadata=client.metadata, timeout=timeout)
    for doc in result.results:
        ranked = {"index": doc.index, "relevance_score": _f32(doc.relevance_score), "text": doc.text}
        print(json.dumps(ranked, ensure_ascii=False))
    return 0


async def _transcribe(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.TranscriptRequest(dst=args.audio, language=args.language, translate=args.translate)
    result = await client.backend.AudioTranscription(request, metadata=client.metadata, timeout=timeout)
    # Segment times are int64 nanoseconds on the wire.
    segments = [(s.id, s.start / 1e9, s.end / 1e9, s.text.strip()) for s in result.segments]
    if args.json:
        data: dict[str, Any] = {
            "text": result.text,
            "language": result.language,
            "duration": round(result.duration, 3),
            "segments": [
                {"id": i, "start": round(start, 3), "end": round(end, 3), "text": text}
                for i, start, end, text in segments
            ],
        }
        print(json.dumps(data, ensure_ascii=False))
        return 0
    for _, start, end, text in segments:
        print(f"[{start:7.2f}s -> {end:7.2f}s] {text}")
    print(f"text: {result.text.strip()}")
    return 0


async def _tts(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    request = pb.TTSRequest(text=args.text, dst=args.dst, voice=args.voice, language=args.language)
    result = await client.backend.TTS(request, metadata=client.metadata, timeout=timeout)
    if not result.success:
        print(f"failed: {result.message}")
        return 1
    print(f"wrote {args.dst}")
    return 0


async def _vad(client: Client, args: argparse.Namespace, timeout: float) -> int:
    from localfleet.proto import backend_pb2 as pb

    samples, seconds = _read_audio(args.audio)
    reply = await client.backend.VAD(pb.VADRequest(audio=samples), metadata=client.metadata, timeout=timeout)
    for segment in reply.segments:
        # A segment still open at the end of the audio comes back with end 0: it ends with the file.
        end = segment.end if segment.end > 0 else seconds
        print(json.dumps({"start": round(segment.start, 3), "end": round(end, 3)}))
    return 0


def _read_audio(path: str) -> tuple[list[float], float]:
    """The file as mono float32 samples at 16 kHz (channels averaged, resampled linearly), and seconds."""
    try:
        import numpy as np
        import soundfile  # type: ignore[import-untyped]  # soundfile ships no type hints
    except ImportError:
        raise ValueError("vad reads audio files with soundfile: pip install soundfile") from None
    if not os.path.isfile(path):
        raise ValueError(f"cannot read audio file {path!r}: no such file")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, soundfile.SoundFileError) as exc:
        raise ValueError(f"cannot read audio file {path!r}: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != VAD_RATE:
        count = round(len(mono) * VAD_RATE / rate)
        mono = np.interp(np.arange(count) * (rate / VAD_RATE), np.arange(len(mono)), mono)
    samples: list[float] = mono.astype(np.float32).tolist()
    return samples, len(samples) / VAD_RATE


def _f32(value: float) -> float:
    """A float32 from the wire, printed with the 9 significant digits that round-trip it, no more."""
    return float(f"{value:.9g}")
