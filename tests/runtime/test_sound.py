"""SoundGeneration's checks and TTS's reference recordings, the same for every sound backend, over gRPC
with a tone generator in place of a model."""

from __future__ import annotations

import math
import struct
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from pydantic import BaseModel

from localfleet.backend import ModelRef
from localfleet.proto import backend_pb2 as pb
from localfleet.sound import SoundBackend, SoundOptions, SoundRequest
from localfleet.speech import SpeechBackend, SpeechRequest, Utterance
from localfleet.testing import Served, serving

pytestmark = pytest.mark.asyncio

RATE = 8000


class Tones(SoundBackend, SpeechBackend):
    """A tone per request, as long as asked: SoundGeneration and TTS without a model."""

    name = "tones"
    Options = SoundOptions
    default_concurrency = 2
    sound_fields = frozenset({"bpm", "lyrics"})
    clones_voices = True

    def __init__(self) -> None:
        self.sounds: list[SoundRequest] = []
        self.speeches: list[SpeechRequest] = []

    def refuse(self, model: ModelRef) -> str | None:
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, SoundOptions)
        self.load_sound_options(options)
        return "tones"

    def unload(self) -> str:
        return "nothing"

    def memory(self) -> dict[str, int]:
        return {}

    def sound(self, request: SoundRequest) -> Utterance:
        self.sounds.append(request)
        return Utterance(RATE, lambda: _tone(request.seconds), "a tone")

    def utterance(self, request: SpeechRequest) -> Utterance:
        self.speeches.append(request)
        return Utterance(RATE, lambda: _tone(0.1), "a tone")


def _tone(seconds: float) -> Iterator[bytes]:
    frames = round(seconds * RATE)
    for start in range(0, frames, RATE // 10):
        count = min(RATE // 10, frames - start)
        yield b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * (start + i) / RATE)))
            for i in range(count)
        )


@pytest.fixture
async def tones(tmp_path: Path) -> AsyncIterator[tuple[Served, Tones]]:
    backend = Tones()
    async with serving(backend, path_roots=[str(tmp_path)]) as served:
        options = ["max_seconds:5", "default_seconds:0.5"]
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model="tones", Options=options))
        assert result.success, result.message
        yield served, backend


async def _refused(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    return err.value


def _frames(path: Path) -> int:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == RATE
        frames: int = wav.getnframes()
        return frames


async def test_duration_sets_the_length_and_unset_means_the_default(
    tones: tuple[Served, Tones], tmp_path: Path
) -> None:
    served, _ = tones
    stub = served.client.backend
    result = await stub.SoundGeneration(
        pb.SoundGenerationRequest(text="rain", dst=str(tmp_path / "a.wav"), duration=2)
    )
    assert result.success
    assert "2.00 s of 8000 Hz audio" in result.message
    assert _frames(tmp_path / "a.wav") == 2 * RATE
    await stub.SoundGeneration(pb.SoundGenerationRequest(text="rain", dst=str(tmp_path / "b.wav")))
    assert _frames(tmp_path / "b.wav") == RATE // 2


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": " \n"}, "text is empty or only whitespace"),
        ({"text": "x", "duration": 0}, "duration is 0; send a number above 0 (seconds of sound)"),
        ({"text": "x", "duration": -1}, "duration is -1"),
        ({"text": "x", "duration": math.nan}, "duration is nan"),
        ({"text": "x", "duration": 6}, "duration 6 s is over this model's limit of 5 s"),
        ({"text": "x", "temperature": 0}, "temperature is 0"),
        ({"text": "x", "keyscale": "C major"}, "keyscale is set, but this model does not use it"),
        ({"text": "x", "instrumental": False}, "instrumental is set, but this model does not use it"),
    ],
)
async def test_a_request_the_model_cannot_honour_is_refused_by_field_and_nothing_is_written(
    tones: tuple[Served, Tones], tmp_path: Path, fields: dict[str, object], expected: str
) -> None:
    served, backend = tones
    dst = tmp_path / "out.wav"
    request = pb.SoundGenerationRequest(dst=str(dst), **fields)  # type: ignore[arg-type]
    err = await _refused(served.client.backend.SoundGeneration(request))
    assert err.status == Status.INVALID_ARGUMENT
    assert expected in (err.message or "")
    assert not dst.exists()
    assert not backend.sounds
    ok = await served.client.backend.SoundGeneration(pb.SoundGenerationRequest(text="x", dst=str(dst)))
    assert ok.success


async def test_the_music_fields_a_model_uses_reach_it_and_caption_stands_in_for_text(
    tones: tuple[Served, Tones], tmp_path: Path
) -> None:
    served, backend = tones
    request = pb.SoundGenerationRequest(caption="lofi", lyrics=" la la ", bpm=90, dst=str(tmp_path / "m.wav"))
    assert (await served.client.backend.SoundGeneration(request)).success
    asked = backend.sounds[-1]
    assert (asked.text, asked.music, asked.asked_seconds) == ("lofi", {"lyrics": "la la", "bpm": 90}, False)


async def test_src_and_dst_are_confined_to_the_path_roots(
    tones: tuple[Served, Tones], tmp_path: Path
) -> None:
    served, backend = tones
    stub = served.client.backend
    outside = "/etc/hostname"
    err = await _refused(
        stub.SoundGeneration(pb.SoundGenerationRequest(text="x", src=outside, dst=str(tmp_path / "o.wav")))
    )
    assert err.status == Status.INVALID_ARGUMENT
    assert "outside the folders" in (err.message or "")
    err = await _refused(
        stub.SoundGeneration(pb.SoundGenerationRequest(text="x", dst="/tmp/elsewhere-out.wav"))
    )
    assert "outside the folders" in (err.message or "")
    err = await _refused(
        stub.SoundGeneration(
            pb.SoundGenerationRequest(src=str(tmp_path / "no.wav"), dst=str(tmp_path / "o.wav"))
        )
    )
    assert err.status == Status.NOT_FOUND
    song = tmp_path / "song.wav"
    song.write_bytes(b"RIFF")
    # With src, the prompt may be empty: the model continues the audio.
    assert (
        await stub.SoundGeneration(pb.SoundGenerationRequest(src=str(song), dst=str(tmp_path / "c.wav")))
    ).success
    assert backend.sounds[-1].src == song.resolve()


async def test_a_voice_that_is_a_recording_arrives_as_a_checked_file(
    tones: tuple[Served, Tones], tmp_path: Path
) -> None:
    served, backend = tones
    stub = served.client.backend
    reference = tmp_path / "me.wav"
    reference.write_bytes(b"RIFF")
    await stub.TTS(pb.TTSRequest(text="hi", voice=str(reference), dst=str(tmp_path / "t.wav")))
    assert backend.speeches[-1].voice_file == reference.resolve()
    await stub.TTS(pb.TTSRequest(text="hi", voice="alice", dst=str(tmp_path / "t.wav")))
    assert backend.speeches[-1].voice_file is None
    assert backend.speeches[-1].voice == "alice"
    err = await _refused(
        stub.TTS(pb.TTSRequest(text="hi", voice="/etc/passwd.wav", dst=str(tmp_path / "t.wav")))
    )
    assert err.status == Status.INVALID_ARGUMENT
    assert "outside the folders" in (err.message or "")
    err = await _refused(stub.TTS(pb.TTSRequest(text="hi", voice="missing.wav", dst=str(tmp_path / "t.wav"))))
    assert err.status in (Status.NOT_FOUND, Status.INVALID_ARGUMENT)
    assert "voice" in (err.message or "")
