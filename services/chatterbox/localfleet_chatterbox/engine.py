"""Chatterbox (chatterbox-tts, torch) behind plain Python types: the only module that imports chatterbox,
torch, librosa and numpy.

A Chatterbox checkpoint is a folder as its Hugging Face repository has it: `ve.safetensors` (the voice
encoder), `t3_cfg.safetensors` (T3, a Llama that turns text tokens into speech tokens), `s3gen.safetensors`
(speech tokens to a 24 kHz waveform: flow matching, then HiFT), `tokenizer.json`, and optionally `conds.pt`
(the built-in voice). A voice is a set of conditionals computed from a reference recording; this module
makes them from samples (decoded by the runtime) rather than a file name, so every format FFmpeg reads
works and a bad file is reported the same way as everywhere else.

Upstream's `generate` speaks a whole text at once with at most 1000 speech tokens; here each sentence (or
piece of a long one) is its own run, so the first audio arrives after one sentence, and each run's
speech tokens are capped by its text's length: a model that never says stop (random weights, or a bad
reference) ends in bounded time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import numpy.typing as npt
import torch
from chatterbox.models.s3gen import S3GEN_SR  # type: ignore[import-untyped]
from chatterbox.models.s3tokenizer import S3_SR, SPEECH_VOCAB_SIZE  # type: ignore[import-untyped]
from chatterbox.models.t3.modules.cond_enc import T3Cond  # type: ignore[import-untyped]
from chatterbox.tts import ChatterboxTTS, Conditionals, punc_norm  # type: ignore[import-untyped]

from localfleet.cpus import cap_threads
from localfleet.speech import PIECE_CHARS, pcm16, split_text

SAMPLE_RATE = S3GEN_SR
#: the files of an English Chatterbox checkpoint (conds.pt, the built-in voice, is optional)
FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
BUILTIN = "conds.pt"
#: other Chatterbox checkpoints, by a file only they have: not served by this engine
OTHER_KINDS = {
    "t3_mtl23ls_v2.safetensors": "Chatterbox Multilingual",
    "t3_turbo_v1.safetensors": "Chatterbox Turbo",
}
#: speech tokens a second (S3 tokenizer) and the most a run may make (upstream's cap)
TOKENS_PER_SECOND = 25
MAX_SPEECH_TOKENS = 1000
#: the longest a reference is heard, as upstream cuts it: 6 s for T3's prompt, 10 s for S3Gen
ENCODER_SECONDS = 6
DECODER_SECONDS = 10
# After . ! ? ; : and a space, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")

# chatterbox logs every stop token and warns once per run about attention outputs; noise here.
logging.getLogger("chatterbox").setLevel(logging.WARNING)
logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)


class NotChatterbox(Exception):
    """The folder is not an English Chatterbox checkpoint; the message says why."""


@dataclass(frozen=True)
class Settings:
    """How one request is spoken (LoadModel options)."""

    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    temperature: float = 0.8
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    max_speech_tokens: int = MAX_SPEECH_TOKENS
    flow_steps: int = 10
    seed: int | None = None


@dataclass
class Voice:
    """A voice's conditionals, computed once (from conds.pt or a reference recording)."""

    conds: Any  # chatterbox.tts.Conditionals

    def with_exaggeration(self, exaggeration: float, device: str) -> Any:
        t3 = self.conds.t3
        cond = T3Cond(
            speaker_emb=t3.speaker_emb,
            cond_prompt_speech_tokens=t3.cond_prompt_speech_tokens,
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=device)
        return Conditionals(cond, self.conds.gen)


def speech_tokens_for(text: str, cap: int) -> int:
    """The most speech tokens one piece of text may take: 2.5 tokens (0.1 s) a character and 2 s more,
    far beyond any speaker's pace, and never above `cap`."""
    return max(1, min(cap, 2 * TOKENS_PER_SECOND + (len(text) * TOKENS_PER_SECOND + 9) // 10))


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """The sentences of `text`, a long one cut into pieces of at most `limit` characters."""
    return [piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit)]


@dataclass
class Model:
    name: str
    device: str
    sample_rate: int
    nbytes: int
    builtin: Voice | None
    _tts: Any  # chatterbox.tts.ChatterboxTTS

    def voice(self, samples: npt.NDArray[np.float32]) -> Voice:
        """Conditionals from a reference recording: mono float32 at SAMPLE_RATE (blocking; seconds)."""
        tts = self._tts
        reference = samples[: DECODER_SECONDS * SAMPLE_RATE]
        at_16k = librosa.resample(samples, orig_sr=SAMPLE_RATE, target_sr=S3_SR)
        with torch.inference_mode():
            gen = tts.s3gen.embed_ref(reference, SAMPLE_RATE, device=self.device)
            prompt_tokens, _ = tts.s3gen.tokenizer.forward(
                [at_16k[: ENCODER_SECONDS * S3_SR]], max_len=tts.t3.hp.speech_cond_prompt_len
            )
            speaker = torch.from_numpy(tts.ve.embeds_from_wavs([at_16k], sample_rate=S3_SR))
        cond = T3Cond(
            speaker_emb=speaker.mean(dim=0, keepdim=True).to(self.device),
            cond_prompt_speech_tokens=prompt_tokens.reshape(1, -1).to(self.device),  # one reference
            emotion_adv=0.5 * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Voice(Conditionals(cond, gen))

    def pcm(self, text: str, voice: Voice, settings: Settings) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per sentence (or piece of a long one) as it is synthesized."""
        if settings.seed is not None:
            torch.manual_seed(settings.seed)  # one request at a time (the servicer's concurrency)
        conds = voice.with_exaggeration(settings.exaggeration, self.device)
        for piece in split_sentences(text):
            if not any(c.isalnum() for c in piece):
                continue
            audio = self._speak(piece, conds, settings)
            if audio.size:
                yield pcm16(audio)

    def _speak(self, piece: str, conds: Any, settings: Settings) -> npt.NDArray[np.float32]:
        tts = self._tts
        hp = tts.t3.hp
        tokens = tts.tokenizer.text_to_tokens(punc_norm(piece)).to(self.device)
        # T3 always runs a batch of two, the second row for classifier-free guidance (its text zeroed
        # when cfg_weight > 0); at cfg_weight 0 both rows are conditional and the guidance term is 0.
        tokens = torch.cat([tokens, tokens], dim=0)
        pad = torch.nn.functional.pad
        tokens = pad(pad(tokens, (1, 0), value=hp.start_text_token), (0, 1), value=hp.stop_text_token)
        with torch.inference_mode():
            speech = tts.t3.inference(
                t3_cond=conds.t3,
                text_tokens=tokens,
                max_new_tokens=speech_tokens_for(piece, settings.max_speech_tokens),
                temperature=settings.temperature,
                cfg_weight=settings.cfg_weight,
                repetition_penalty=settings.repetition_penalty,
                min_p=settings.min_p,
                top_p=settings.top_p,
            )[0]
            speech = speech[speech < SPEECH_VOCAB_SIZE]  # drops start, stop and padding tokens
            if not speech.numel():
                return np.zeros(0, dtype=np.float32)
            wav, _ = tts.s3gen.inference(
                speech_tokens=speech.to(self.device), ref_dict=conds.gen, n_cfm_timesteps=settings.flow_steps
            )
            samples = wav.squeeze(0).detach().cpu().numpy()
        marked: npt.NDArray[np.float32] = tts.watermarker.apply_watermark(samples, sample_rate=SAMPLE_RATE)
        return np.asarray(marked, dtype=np.float32).reshape(-1)


def check_folder(folder: Path) -> None:
    """NotChatterbox unless `folder` holds an English Chatterbox checkpoint."""
    for marker, kind in OTHER_KINDS.items():
        if (folder / marker).is_file():
            raise NotChatterbox(f"{folder} holds {kind} ({marker}); this backend serves English Chatterbox")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise NotChatterbox(
            f"{folder} lacks {', '.join(missing)}: a Chatterbox checkpoint has {', '.join(FILES)} "
            f"(and {BUILTIN} for its built-in voice)"
        )


def device_for(asked: str) -> str:
    if asked:
        return asked
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def load(folder: Path, device: str = "", threads: int = 0) -> Model:
    check_folder(folder)
    if threads > 0:
        torch.set_num_threads(cap_threads(threads))
    where = device_for(device)
    try:
        tts = ChatterboxTTS.from_local(folder, where)
    except Exception as err:  # a truncated file, another model's tensors: safetensors and torch say which
        raise NotChatterbox(f"cannot load the checkpoint in {folder}: {type(err).__name__}: {err}") from err
    builtin = Voice(tts.conds) if tts.conds is not None else None
    nbytes = sum((folder / name).stat().st_size for name in FILES)
    return Model(folder.name, where, SAMPLE_RATE, nbytes, builtin, tts)
