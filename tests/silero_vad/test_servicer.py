"""silero-vad over real gRPC: Silero's ONNX model (torch-free) on noise, Piper's speech and a pure tone."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_silero_vad.servicer import SileroVAD
from tests.audio_fixtures import RATE, Clip, noise

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOLERANCE = 0.3  # seconds, around the true start and end of the speech


def official_model() -> str:
    """Silero's own streaming-signature silero_vad.onnx (the file LocalAI's gallery serves)."""
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None
    assert spec.submodule_search_locations, "pip install -e '.[silero-vad-models]'"
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx")


async def load(served: Served, model: str, *options: str) -> pb.Result:
    result: pb.Result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model, Options=options))
    return result


async def vad(served: Served, audio: np.ndarray | Sequence[float]) -> list[tuple[float, float]]:
    reply = await served.client.backend.VAD(pb.VADRequest(audio=np.asarray(audio, np.float32)))
    return [(s.start, s.end) for s in reply.segments]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def detector() -> AsyncIterator[Served]:
    async with serving(SileroVAD()) as served:
        result = await load(served, "silero-vad")
        assert result.success, result.message
        assert "sequence" in result.message
        yield served


def one_segment_near(segments: list[tuple[float, float]], clip: Clip) -> None:
    assert len(segments) == 1, segments
    [(start, end)] = segments
    assert abs(start - clip.speech[0]) <= TOLERANCE, (start, clip.speech)
    assert abs(end - clip.speech[1]) <= TOLERANCE, (end, clip.speech)


@pytest.mark.parametrize("model", ["bundled", "official"])
async def test_speech_between_noise_and_a_tone_is_one_segment(vad_clip: Clip, model: str) -> None:
    async with serving(SileroVAD()) as served:
        # Piper pauses about 0.25 s at the comma: a longer minimum silence keeps the sentence whole.
        name = "silero-vad" if model == "bundled" else official_model()
        result = await load(served, name, "min_silence_ms:500")
        assert result.success, result.message
        one_segment_near(await vad(served, vad_clip.samples), vad_clip)


async def test_noise_alone_and_a_pure_tone_are_not_speech(detector: Served) -> None:
    assert await vad(detector, noise(5.0, 0.01, 11)) == []
    assert await vad(detector, noise(5.0, 0.2, 12)) == []
    fade = np.minimum(1.0, np.arange(3 * RATE) / (0.02 * RATE))  # no click at the start
    for hz in (220, 440, 1000):
        tone = 0.5 * fade * np.sin(2 * np.pi * hz * np.arange(3 * RATE) / RATE)
        assert await vad(detector, tone) == [], hz


async def test_defaults_split_at_a_pause_longer_than_100_ms(detector: Served, vad_clip: Clip) -> None:
    # LocalAI's defaults: threshold 0.5, minimum silence 100 ms, padding 30 ms.
    segments = await vad(detector, vad_clip.samples)
    assert len(segments) == 2, segments
    (first_start, first_end), (second_start, second_end) = segments
    assert abs(first_start - vad_clip.speech[0]) <= TOLERANCE
    assert first_end < second_start
    assert abs(second_end - vad_clip.speech[1]) <= TOLERANCE


async def test_a_segment_still_open_at_the_end_has_end_zero(detector: Served, speech_clip: Clip) -> None:
    cut = np.concatenate([noise(1.0, 0.01, 5), speech_clip.samples[: len(speech_clip.samples) // 2]])
    segments = await vad(detector, cut)
    assert segments
    assert segments[-1][1] == 0.0
    assert 0.5 < segments[-1][0] < len(cut) / RATE
    assert all(end > start for start, end in segments[:-1])


async def test_padding_and_threshold_come_from_options(vad_clip: Clip) -> None:
    async with serving(SileroVAD()) as served:
        assert (await load(served, "silero-vad", "min_silence_ms:500")).success
        [(start, end)] = await vad(served, vad_clip.samples)
        assert (await load(served, "silero-vad", "min_silence_ms:500", "speech_pad_ms:330")).success
        [(padded_start, padded_end)] = await vad(served, vad_clip.samples)
        assert padded_start == pytest.approx(start - 0.3, abs=0.002)
        assert padded_end == pytest.approx(end + 0.3, abs=0.002)
        # A threshold no probability reaches finds nothing.
        assert (await load(served, "silero-vad", "threshold:0.9999")).success
        assert await vad(served, vad_clip.samples) == []


async def test_fewer_than_512_samples_is_invalid(detector: Served) -> None:
    with pytest.raises(GRPCError) as err:
        await vad(detector, np.zeros(511, np.float32))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "512" in (err.value.message or "")
    assert await vad(detector, np.zeros(512, np.float32)) == []


async def test_samples_outside_minus_one_to_one_are_invalid(detector: Served, speech_clip: Clip) -> None:
    # 16-bit PCM sent as floats without scaling: a client bug to name, not to answer with nothing.
    with pytest.raises(GRPCError) as err:
        await vad(detector, speech_clip.samples * 32768)
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "[-1, 1]" in (err.value.message or "")
    with pytest.raises(GRPCError) as err:
        await vad(detector, np.full(1024, np.nan, np.float32))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (await detector.client.backend.Health(pb.HealthMessage())).message == b"OK"


async def test_models_it_cannot_serve_are_refused(tmp_path: Path) -> None:
    not_onnx = tmp_path / "silero_vad.onnx"
    not_onnx.write_bytes(b"not a model")
    async with serving(SileroVAD()) as served:
        refused = await load(served, "ggml-whisper-base.bin")
        assert not refused.success
        assert "cannot serve" in refused.message
        broken = await load(served, str(not_onnx))
        assert not broken.success
        assert "ONNX" in broken.message
        bad_option = await load(served, "silero-vad", "threshold:2")
        assert not bad_option.success
        assert "threshold" in bad_option.message


async def test_before_load_vad_is_failed_precondition() -> None:
    async with serving(SileroVAD()) as served:
        with pytest.raises(GRPCError) as err:
            await vad(served, np.zeros(1024, np.float32))
        assert err.value.status == Status.FAILED_PRECONDITION
