"""Coqui TTS models (coqui-tts on torch) behind plain Python types: the only module that imports TTS,
torch and numpy.

A model is a Coqui model folder: `config.json` and the checkpoint (`model.pth`, `model_file.pth`,
`best_model.pth` or `checkpoint_*.pth`), with the files the config names (speakers.json,
language_ids.json, d-vectors, a speaker encoder) beside it. Published configs name those files where
the model was trained; like Coqui's own model manager, a path that is not there is looked up beside the
model by its file name. XTTS folders also hold vocab.json and, for its preset voices, speakers_xtts.pth.

Two families, one interface (`Model.pcm`):
- single-pass models (VITS, YourTTS, Glow-TTS, Tacotron with a vocoder, ...): each sentence is
  synthesized whole and handed on as soon as it is ready;
- XTTS: `inference_stream`, which hands on audio every few GPT steps, so the first audio of a sentence
  arrives before the sentence is done. The voice is a reference recording (decoded by the runtime's
  PyAV, not torchaudio, which would need FFmpeg's libraries) or one of its preset speakers.

Sentences after the first open with the pause Coqui's own API puts between sentences.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from TTS.config import load_config  # type: ignore[import-untyped]
from TTS.tts.models import setup_model  # type: ignore[import-untyped]

from localfleet.audio import decode
from localfleet.speech import PIECE_CHARS, pcm16, split_text

#: checkpoint names Coqui's folders use, best first
CHECKPOINTS = ("model.pth", "model_file.pth", "best_model.pth", "model.pth.tar", "model_file.pth.tar")
#: config keys that name files beside the model (top level or under model_args)
FILE_KEYS = (
    "speakers_file",
    "speaker_file",
    "language_ids_file",
    "d_vector_file",
    "speaker_encoder_model_path",
    "speaker_encoder_config_path",
    "tokenizer_file",
)
#: silence Coqui's Synthesizer puts after each sentence (samples)
PAUSE_SAMPLES = 10000
#: XTTS reads its reference voices at this rate
XTTS_RATE = 22050
# After . ! ? ; : and a space, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


class NotCoqui(Exception):
    """The path is not a Coqui model this backend can load; the message says why."""


class BadVoice(Exception):
    """A reference recording the model cannot clone; the message says why."""


@dataclass
class Model:
    name: str
    #: config.json's `model` (vits, xtts, glow_tts, ...)
    kind: str
    sample_rate: int
    speakers: list[str]
    languages: list[str]
    #: whether a reference recording can be the voice (XTTS, or a model with a speaker encoder)
    clones: bool
    #: whether audio comes out before each sentence is done (XTTS)
    streams: bool
    nbytes: int
    device: str
    _model: Any
    _vocoder: Any = None
    _vocoder_ap: Any = None
    #: XTTS inference settings (temperature, top_k, ...), from its config and the LoadModel options
    settings: dict[str, Any] = field(default_factory=dict)
    #: XTTS GPT steps between two audio chunks
    stream_chunk_size: int = 20

    def voice(self, reference: Path) -> object:
        """A reference recording made ready to speak with (decoded, and for XTTS its latents); raises
        BadInput (from `decode`) when it is not audio, BadVoice when the model cannot use it."""
        samples = decode(reference, "voice", XTTS_RATE)
        if self.kind != "xtts":
            return reference  # the model's speaker encoder reads the file itself
        model = self._model
        audio = torch.from_numpy(samples).unsqueeze(0)
        try:
            with torch.inference_mode():
                latent = model.get_gpt_cond_latents(
                    audio,
                    XTTS_RATE,
                    length=model.config.gpt_cond_len,
                    chunk_length=model.config.gpt_cond_chunk_len,
                )
                embedding = model.get_speaker_embedding(audio, XTTS_RATE)
        except RuntimeError as err:  # a recording too short for the conditioning
            raise BadVoice(f"the voice recording {reference.name} cannot be cloned: {err}") from err
        return (latent, embedding)

    def pcm(self, text: str, speaker: str, language: str, voice: object, seed: int | None) -> Iterator[bytes]:
        """s16le mono PCM, one or more chunks per sentence (or piece of a long one) as synthesized."""
        with torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            if self.kind == "xtts":
                yield from self._xtts(text, speaker, language, voice)
                return
            reference = voice if isinstance(voice, Path) else None
            pause = np.zeros(PAUSE_SAMPLES, dtype=np.float32)
            first = True
            for piece in split_sentences(text):
                audio = self._sentence(piece, speaker, language, reference)
                if audio.size:
                    yield pcm16(audio if first else np.concatenate([pause, audio]))
                    first = False

    def _sentence(self, text: str, speaker: str, language: str, reference: Path | None) -> np.ndarray:
        """One sentence as Coqui's Synthesizer speaks it: the model, then the vocoder or Griffin-Lim."""
        model = self._model
        outputs = model.synthesize(
            text=text,
            speaker=speaker or None,
            speaker_wav=str(reference) if reference else None,
            language=language or None,
            use_griffin_lim=self._vocoder is None,
        )
        if self._vocoder is None:
            wav = outputs["wav"]
        else:
            spec = outputs["outputs"]["model_outputs"][0].detach().cpu().numpy()
            spec = self._vocoder_ap.normalize(model.ap.denormalize(spec.T))
            wav = self._vocoder.inference(torch.tensor(spec).unsqueeze(0).to(self.device))
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        audio = np.asarray(wav, dtype=np.float32).reshape(-1)
        if model.config.audio.get("do_trim_silence"):
            audio = audio[: model.ap.find_endpoint(audio)]
        return audio

    def _xtts(self, text: str, speaker: str, language: str, voice: object) -> Iterator[bytes]:
        model = self._model
        if isinstance(voice, tuple):
            latent, embedding = voice
        else:
            latent, embedding = model.speaker_manager.speakers[speaker].values()
        code = language.split("-", maxsplit=1)[0]
        limit = min(PIECE_CHARS, model.tokenizer.char_limits.get(code, PIECE_CHARS))
        pause = np.zeros(PAUSE_SAMPLES, dtype=np.float32)
        first = True
        for piece in split_sentences(text, limit):
            opening = not first  # a later sentence opens with Coqui's pause between sentences
            for chunk in model.inference_stream(
                piece,
                language,
                latent,
                embedding,
                stream_chunk_size=self.stream_chunk_size,
                enable_text_splitting=False,
                **self.settings,
            ):
                audio = chunk.detach().cpu().numpy().astype(np.float32).reshape(-1)
                if audio.size:
                    yield pcm16(np.concatenate([pause, audio]) if opening else audio)
                    opening = first = False


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """The sentences of `text` with words in them, a long one cut into pieces of at most `limit`
    characters: a run's memory grows with its length."""
    pieces = (piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit))
    return [piece for piece in pieces if any(c.isalnum() for c in piece)]


def find(path: Path) -> tuple[Path, Path]:
    """(config.json, checkpoint) for a model folder, its config.json or its checkpoint."""
    if path.is_dir():
        folder, checkpoint = path, None
    elif path.is_file():
        folder = path.parent
        checkpoint = None if path.name == "config.json" else path
    else:
        raise NotCoqui(f"{path} is neither a file nor a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise NotCoqui(f"{folder} has no config.json: not a Coqui model folder")
    if checkpoint is None:
        found = [folder / name for name in CHECKPOINTS if (folder / name).is_file()]
        found += sorted(folder.glob("checkpoint_*.pth"))
        if not found:
            raise NotCoqui(f"{folder} has no checkpoint ({', '.join(CHECKPOINTS[:3])} or checkpoint_*.pth)")
        checkpoint = found[0]
    return config, checkpoint


def read_kind(config_path: Path) -> str:
    """The config's `model`, checked to be a Coqui text-to-speech config."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise NotCoqui(f"cannot read {config_path}: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
        raise NotCoqui(f'{config_path} names no Coqui model (no "model" key)')
    kind: str = raw["model"].lower()
    return kind


def _beside(config: Any, folder: Path) -> None:
    """Point file paths that are not there at the file of that name beside the model."""
    for holder in (config, config.get("model_args")):
        if holder is None:
            continue
        for key in FILE_KEYS:
            value = holder.get(key) if key in holder else None
            if isinstance(value, str) and value and not Path(value).exists():
                local = folder / Path(value).name
                if local.exists():
                    holder[key] = str(local)
            elif isinstance(value, list):
                holder[key] = [
                    str(folder / Path(v).name)
                    if isinstance(v, str) and not Path(v).exists() and (folder / Path(v).name).exists()
                    else v
                    for v in value
                ]


def _size(model: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def load(
    path: Path,
    *,
    device: str,
    vocoder: Path | None = None,
    xtts_settings: dict[str, Any] | None = None,
    stream_chunk_size: int = 20,
) -> Model:
    config_path, checkpoint = find(path)
    kind = read_kind(config_path)
    folder = config_path.parent
    try:
        config = load_config(str(config_path))
    except Exception as err:  # coqpit raises whatever its fields do
        raise NotCoqui(f"{config_path} is not a Coqui config coqui-tts can read: {err}") from err
    if not hasattr(config, "audio"):
        raise NotCoqui(f"{config_path} is a {kind} config, not a text-to-speech model's")
    if config.get("use_phonemes") and config.get("phonemizer") is None:
        raise NotCoqui(f"{config_path} uses phonemes but names no phonemizer")
    _beside(config, folder)
    try:
        model = setup_model(config)
        if kind == "xtts":
            model.load_checkpoint(
                config, checkpoint_dir=str(folder), checkpoint_path=str(checkpoint), eval=True
            )
        else:
            model.load_checkpoint(config, str(checkpoint), eval=True)
    except Exception as err:  # torch.load and the model classes raise whatever a bad file makes them
        raise NotCoqui(f"coqui-tts cannot load {checkpoint} with {config_path.name}: {err}") from err
    model.to(device)
    loaded = Model(
        name=folder.name,
        kind=kind,
        sample_rate=int(config.audio.get("output_sample_rate") or config.audio["sample_rate"]),
        speakers=[],
        languages=[],
        clones=False,
        streams=kind == "xtts",
        nbytes=_size(model),
        device=device,
        _model=model,
        stream_chunk_size=stream_chunk_size,
    )
    manager = getattr(model, "speaker_manager", None)
    if kind == "xtts":
        loaded.clones = True
        loaded.languages = list(config.languages)
        loaded.speakers = list(manager.speakers) if manager is not None else []
        loaded.settings = {
            key: config[key]
            for key in ("temperature", "length_penalty", "repetition_penalty", "top_k", "top_p")
        }
        loaded.settings.update(xtts_settings or {})
    else:
        if manager is not None:
            names = manager.name_to_id or {}
            loaded.speakers = list(manager.embedding_names or names)
            loaded.clones = manager.encoder is not None
        if len(loaded.speakers) == 1:
            loaded.speakers = []  # one speaker: nothing to choose
        loaded.languages = list(model.language_manager.name_to_id) if model.language_manager else []
        if len(loaded.languages) == 1:
            loaded.languages = []
    if vocoder is not None:
        _vocoder(loaded, vocoder, device)
    return loaded


def _vocoder(loaded: Model, path: Path, device: str) -> None:
    from TTS.utils.audio import AudioProcessor  # type: ignore[import-untyped]
    from TTS.vocoder.models import setup_model as setup_vocoder  # type: ignore[import-untyped]

    config_path, checkpoint = find(path)
    try:
        config = load_config(str(config_path))
        vocoder = setup_vocoder(config)
        vocoder.load_checkpoint(config, str(checkpoint), eval=True)
    except Exception as err:  # coqpit and the vocoder classes raise what their fields do
        raise NotCoqui(f"coqui-tts cannot load the vocoder {checkpoint}: {err}") from err
    if int(config.audio["sample_rate"]) != loaded.sample_rate:
        raise NotCoqui(
            f"the vocoder speaks at {config.audio['sample_rate']} Hz, the model at {loaded.sample_rate} Hz"
        )
    loaded._vocoder = vocoder.to(device)
    loaded._vocoder_ap = AudioProcessor(**config.audio)
    loaded.nbytes += _size(vocoder)
