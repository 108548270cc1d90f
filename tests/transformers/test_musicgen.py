"""SoundGeneration with MusicGen over real gRPC, on a tiny random MusicGen built into the test cache.

Its weights are random, so its audio is noise: nothing listens for music. The tests check the WAV's shape
(sample rate, a length that follows the duration asked) and compare its samples with the same weights run
by transformers in-process (same seed, same sampling settings), and everything the backend decides.
"""

from __future__ import annotations

import math
import os
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.speech import pcm16
from localfleet.testing import Served, serving
from localfleet_transformers.servicer import Transformers
from tests.steps import watching_steps
from tests.transformers.tiny_musicgen import CODEBOOKS, FRAME_RATE, SAMPLE_RATE, WINDOW

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "happy rock music with drums"
SEED = 7
MAX_SECONDS = 30
DEFAULT_SECONDS = 0.5
#: ModelOptions.Type as LocalAI's MusicGen configs write it
MUSICGEN_TYPE = "MusicgenForConditionalGeneration"
#: the INVALID_ARGUMENT every refusal by field is
BAD = Status.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder requests may read and write (LOCALFLEET_PATH_ROOTS)."""
    return tmp_path_factory.mktemp("sounds")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def music(tiny_musicgen: Path, roots: Path) -> AsyncIterator[Served]:
    async with serving(Transformers(), path_roots=[str(roots), str(tiny_musicgen)]) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(
                Model=str(tiny_musicgen),
                Seed=SEED,
                Options=[f"max_seconds:{MAX_SECONDS}", f"default_seconds:{DEFAULT_SECONDS}"],
            )
        )
        assert result.success, result.message
        assert result.message.startswith("musicgen model MusicgenForConditionalGeneration (MusicGen)")
        assert f"up to {MAX_SECONDS} s a request, seed {SEED}" in result.message
        yield served


@pytest.fixture(scope="module")
def bare(tiny_musicgen: Path) -> tuple[Any, Any]:
    """The same weights in-process, straight through transformers."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_musicgen, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tiny_musicgen, local_files_only=True)  # type: ignore[no-untyped-call]
    return model.eval(), processor  # type: ignore[no-untyped-call]


def bare_pcm(
    bare: tuple[Any, Any],
    text: str,
    seconds: float,
    seed: int | None = SEED,
    audio: Any = None,
    **kwargs: Any,
) -> bytes:
    """What transformers makes of the request: MusicGen's steps for `seconds` after the prompt (its
    codebooks' delay added), cut to the exact length, as s16le PCM."""
    import torch

    model, processor = bare
    fields: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if audio is not None:
        fields.update(audio=audio, sampling_rate=SAMPLE_RATE)
    inputs = processor(**fields)
    inputs.pop("padding_mask", None)
    steps = math.ceil(seconds * FRAME_RATE) + CODEBOOKS - 1
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=steps, **kwargs)
    samples = out[0, 0].numpy()
    prompt = 0 if audio is None else len(audio)
    return pcm16(samples[: prompt + round(seconds * SAMPLE_RATE)])


def read_wav(path: Path) -> tuple[int, int, bytes]:
    """Rate, frames and PCM of a mono 16-bit WAV whose header agrees with its data."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        pcm = wav.readframes(wav.getnframes())
        rate, frames = wav.getframerate(), wav.getnframes()
    assert len(pcm) == 2 * frames
    assert path.stat().st_size == 44 + len(pcm)
    return rate, frames, pcm


async def generate(served: Served, dst: Path, text: str = PROMPT, **fields: Any) -> pb.Result:
    result: pb.Result = await served.client.backend.SoundGeneration(
        pb.SoundGenerationRequest(text=text, dst=str(dst), **fields)
    )
    return result


async def refused(served: Served, dst: Path, text: str = PROMPT, **fields: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await generate(served, dst, text, **fields)
    assert await served.client.healthy()
    return err.value


async def serves_on(served: Served, roots: Path) -> None:
    """The process answers, and the next generation succeeds."""
    assert await served.client.healthy()
    assert (await generate(served, roots / "after.wav", duration=0.2)).success


def melody_config(folder: Path) -> Path:
    """A folder with only a MusicGen Melody config.json (sub-configs from the tiny MusicGen's)."""
    from transformers import AutoConfig, MusicgenMelodyConfig

    from tests.transformers.tiny_musicgen import build_tiny_musicgen

    plain: Any = AutoConfig.from_pretrained(build_tiny_musicgen())
    parts = {name: getattr(plain, name).to_dict() for name in ("text_encoder", "audio_encoder", "decoder")}
    MusicgenMelodyConfig(**parts).save_pretrained(folder)
    return folder


def tone(path: Path, seconds: float, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        frames = (int(6000 * math.sin(2 * math.pi * 330 * i / rate)) for i in range(round(seconds * rate)))
        wav.writeframes(b"".join(v.to_bytes(2, "little", signed=True) for v in frames))
    return path


# -- the WAV -------------------------------------------------------------------------------------------
async def test_a_wav_at_the_models_rate_with_the_samples_transformers_makes(
    music: Served, roots: Path, bare: tuple[Any, Any]
) -> None:
    dst = roots / "song.wav"
    result = await generate(music, dst, duration=1.0)
    assert result.success
    assert f"wrote 1.00 s of {SAMPLE_RATE} Hz audio (MusicGen, seed {SEED}) to {dst}" in result.message
    rate, frames, pcm = read_wav(dst)
    assert (rate, frames) == (SAMPLE_RATE, SAMPLE_RATE)
    assert pcm == bare_pcm(bare, PROMPT, 1.0)
    assert len(set(pcm)) > 10  # not silence
    assert not [name for name in os.listdir(roots) if name.startswith(".")]  # no temporary file left


async def test_the_length_follows_the_duration_and_unset_is_the_default(music: Served, roots: Path) -> None:
    lengths = {}
    for seconds in (0.3, 1.1, 2.5):
        await generate(music, roots / f"{seconds}.wav", duration=seconds)
        lengths[seconds] = read_wav(roots / f"{seconds}.wav")[1]
    assert lengths == {s: round(s * SAMPLE_RATE) for s in lengths}
    await generate(music, roots / "default.wav")
    assert read_wav(roots / "default.wav")[1] == round(DEFAULT_SECONDS * SAMPLE_RATE)


async def test_the_seed_makes_it_repeat_and_no_seed_does_not(
    music: Served, roots: Path, tiny_musicgen: Path
) -> None:
    await generate(music, roots / "a.wav", duration=0.5)
    await generate(music, roots / "b.wav", duration=0.5)
    other = await generate(music, roots / "c.wav", "sad piano song", duration=0.5)
    assert read_wav(roots / "a.wav") == read_wav(roots / "b.wav")
    assert read_wav(roots / "c.wav")[2] != read_wav(roots / "a.wav")[2]
    assert "seed 7" in other.message
    async with serving(Transformers(), path_roots=[str(roots), str(tiny_musicgen)]) as unseeded:
        loaded = await unseeded.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_musicgen)))
        assert "no fixed seed" in loaded.message
        await generate(unseeded, roots / "d.wav", duration=0.5)
        await generate(unseeded, roots / "e.wav", duration=0.5)
    assert read_wav(roots / "d.wav")[2] != read_wav(roots / "e.wav")[2]


async def test_sample_false_is_greedy_and_temperature_reaches_the_sampler(
    music: Served, roots: Path, bare: tuple[Any, Any]
) -> None:
    await generate(music, roots / "greedy.wav", duration=0.5, sample=False)
    greedy = bare_pcm(bare, PROMPT, 0.5, seed=None, do_sample=False)
    assert read_wav(roots / "greedy.wav")[2] == greedy
    await generate(music, roots / "hot.wav", duration=0.5, temperature=0.4)
    hot = read_wav(roots / "hot.wav")[2]
    assert hot == bare_pcm(bare, PROMPT, 0.5, do_sample=True, temperature=0.4)
    assert hot != bare_pcm(bare, PROMPT, 0.5)  # the model's own temperature (1) samples otherwise


async def test_src_is_continued_after_its_own_audio(
    music: Served, roots: Path, bare: tuple[Any, Any]
) -> None:
    from localfleet.audio import decode

    src = tone(roots / "start.wav", 0.4)
    prompt = decode(src, "src", SAMPLE_RATE)  # as the backend reads it: resampled to the model's rate
    await generate(music, roots / "more.wav", src=str(src), duration=0.5)
    _, frames, pcm = read_wav(roots / "more.wav")
    assert frames == len(prompt) + SAMPLE_RATE // 2
    assert pcm == bare_pcm(bare, PROMPT, 0.5, audio=prompt)
    # With src the text may be left out: the model continues the audio alone.
    await generate(music, roots / "alone.wav", " ", src=str(src), duration=0.5)
    assert read_wav(roots / "alone.wav")[2] == bare_pcm(bare, "", 0.5, audio=prompt)
    # A src longer than the longest sound a request may ask for is refused.
    err = await refused(music, roots / "long.wav", src=str(tone(roots / "long-src.wav", MAX_SECONDS + 1)))
    assert err.status == Status.INVALID_ARGUMENT
    assert f"over this model's limit of {MAX_SECONDS} s" in (err.message or "")
    assert not (roots / "long.wav").exists()


async def test_a_prompt_past_the_text_encoders_window_is_cut_to_it(tiny_musicgen: Path) -> None:
    # The tiny model's random text encoder hears no difference past a few hundred tokens, so this is
    # checked on what the engine hands generate(): at most the tokenizer's window, the end mark last.
    from localfleet_transformers.engine import LoadSpec, load
    from localfleet_transformers.music import Asked, MusicModel

    model = load(LoadSpec(path=str(tiny_musicgen)))
    assert isinstance(model, MusicModel)
    words = ["sad", "piano", "song"] * 1000
    ids = model.inputs(Asked(" ".join(words), 1.0))["input_ids"][0].tolist()
    assert len(ids) == WINDOW
    assert ids == model.inputs(Asked(" ".join(words[: WINDOW - 1]), 1.0))["input_ids"][0].tolist()
    assert len(model.inputs(Asked("sad piano song", 1.0))["input_ids"][0]) == 4


# -- what is refused, and the process serves on ---------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "status", "expected"),
    [
        ({"text": " \n\t"}, BAD, "text is empty or only whitespace"),
        ({"duration": MAX_SECONDS + 1}, BAD, f"over this model's limit of {MAX_SECONDS} s"),
        ({"duration": 0}, BAD, "duration is 0"),
        ({"lyrics": "la la"}, BAD, "lyrics is set, but this model does not use it"),
        ({"bpm": 120}, BAD, "bpm is set, but this model does not use it"),
        ({"temperature": 0.5, "sample": False}, BAD, "temperature is set but sample is false"),
        ({"src": "missing.wav"}, Status.NOT_FOUND, "src"),
    ],
)
async def test_a_request_it_cannot_honour_is_refused_by_field_and_writes_nothing(
    music: Served, roots: Path, fields: dict[str, Any], status: Status, expected: str
) -> None:
    dst = roots / "refused.wav"
    fields.setdefault("text", PROMPT)
    if "src" in fields:
        fields["src"] = str(roots / fields["src"])
    err = await refused(music, dst, **fields)
    assert err.status == status
    assert expected in (err.message or "")
    assert not dst.exists()
    await serves_on(music, roots)


async def test_dst_outside_the_roots_is_refused(music: Served, roots: Path, tmp_path: Path) -> None:
    err = await refused(music, tmp_path / "outside.wav")
    assert err.status == Status.INVALID_ARGUMENT
    assert "outside the folders" in (err.message or "")
    assert not (tmp_path / "outside.wav").exists()
    await serves_on(music, roots)


async def test_a_cancelled_generation_stops_at_a_step_and_leaves_no_file(music: Served, roots: Path) -> None:
    dst = roots / "cancelled.wav"
    total = math.ceil((MAX_SECONDS * FRAME_RATE + CODEBOOKS - 1) / FRAME_RATE)
    with watching_steps() as steps:
        request = pb.SoundGenerationRequest(text=PROMPT, dst=str(dst), duration=MAX_SECONDS)
        async with music.client.backend.SoundGeneration.open() as call:
            await call.send_message(request, end=True)
            await steps.seen.wait()  # a second of audio is made: the model is generating
            assert await music.client.healthy(timeout=1.0)
            await call.cancel()
        await serves_on(music, roots)  # served once the cancelled generation let go of the model
    made = [s for s in steps.steps if s.endswith(f"/{total}")]
    assert 1 <= len(made) < total
    assert made[0] == f"SoundGeneration: step 1/{total}"
    assert not dst.exists()
    assert not [name for name in os.listdir(roots) if name.startswith(".")]
    assert music.runtime.in_flight == 0


async def test_text_rpcs_refuse_a_musicgen_model(music: Served) -> None:
    backend = music.client.backend
    for call in (
        backend.Predict(pb.PredictOptions(Prompt="Hello")),
        backend.Embedding(pb.PredictOptions(Embeddings="Hello")),
        backend.TokenizeString(pb.PredictOptions(Prompt="Hello")),
    ):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status == Status.INVALID_ARGUMENT
        assert "(MusicGen) makes sound from text: it serves SoundGeneration only" in (err.value.message or "")
    assert await music.client.healthy()


async def test_a_text_model_refuses_sound_and_type_must_match_the_folder(
    tiny_llama: Path, tiny_musicgen: Path, roots: Path, tmp_path: Path
) -> None:
    melody = melody_config(tmp_path / "melody")
    readable = [str(roots), str(tiny_llama), str(tiny_musicgen), str(melody)]
    async with serving(Transformers(), path_roots=readable) as served:
        stub = served.client.backend
        wrong = await stub.LoadModel(pb.ModelOptions(Model=str(tiny_llama), Type=MUSICGEN_TYPE))
        assert not wrong.success
        assert "holds a llama, not MusicGen" in wrong.message
        # MusicGen Melody's processor needs torchaudio: refused by name, before any weights are read.
        refused_melody = await stub.LoadModel(pb.ModelOptions(Model=str(melody)))
        assert not refused_melody.success
        assert "is MusicGen Melody, which is not served here: its processor needs torchaudio" in (
            refused_melody.message
        )
        assert (await stub.LoadModel(pb.ModelOptions(Model=str(tiny_llama)))).success
        err = await refused(served, roots / "llm.wav")
        assert err.status == Status.INVALID_ARGUMENT
        assert "is a causal-lm text model and makes no sound; load a MusicGen model" in (err.message or "")
        assert not (roots / "llm.wav").exists()
        # LocalAI's configs name MusicGen by its class: the same model as found by its config.
        named = await stub.LoadModel(pb.ModelOptions(Model=str(tiny_musicgen), Type=MUSICGEN_TYPE))
        assert named.success, named.message
        assert (await generate(served, roots / "named.wav", duration=0.2)).success
        # And back to text: the MusicGen model is released.
        assert (await stub.LoadModel(pb.ModelOptions(Model=str(tiny_llama)))).success
        assert (await stub.Predict(pb.PredictOptions(Prompt="Hello", Tokens=2))).message is not None
