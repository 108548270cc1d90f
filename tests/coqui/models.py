"""Tiny random Coqui models (VITS, XTTS), built offline once into the test cache.

No Coqui weights install from PyPI, so the tests build VITS models from coqui-tts's own classes with
random weights and a few channels (a fraction of a megabyte, about a second each): one single-speaker
English model as a Coqui model folder (model.pth, config.json), and one with two speakers and two
languages (speakers.json and language_ids.json beside it, named by a path that is not there, as in the
configs of Coqui's published models). Their audio is noise whose length grows with the text.

`build_xtts` writes an XTTS folder (model.pth, config.json, vocab.json: a character-level BPE with
XTTS's special tokens; speakers_xtts.pth with one preset voice) with a one-layer GPT of 32 channels that
stops after at most `XTTS_TOKENS` audio tokens; its HiFi-GAN decoder and speaker encoder have XTTS's
fixed sizes (90 MB, about 15 s to build).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

#: bump when the builder changes what it writes
VERSION = "1"
RATE = 22050
SPEAKERS = ["alice", "bob"]
LANGUAGES = ["en", "fr"]
#: the most audio tokens the tiny XTTS generates for one sentence (1,024 samples at 22,050 Hz each)
XTTS_TOKENS = 12
XTTS_RATE = 24000
XTTS_SPEAKER = "Ana Florence"


def cache_root() -> Path:
    """Where the models are kept between test runs: LOCALFLEET_TEST_CACHE, else the temp folder."""
    root = os.environ.get("LOCALFLEET_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "localfleet-test-cache"
    )
    return Path(root) / f"coqui-v{VERSION}"


def build_vits(folder: Path, *, speakers: bool = False) -> Path:
    """A VITS model folder at `folder` (reused when complete); `speakers`: two speakers, two languages."""
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch
    from TTS.tts.configs.shared_configs import CharactersConfig  # type: ignore[import-untyped]
    from TTS.tts.configs.vits_config import VitsConfig  # type: ignore[import-untyped]
    from TTS.tts.models.vits import Vits, VitsArgs  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    characters = CharactersConfig(
        characters_class="TTS.tts.utils.text.characters.Graphemes",
        pad="_",
        eos="~",
        bos="^",
        blank="#",
        characters="abcdefghijklmnopqrstuvwxyz",
        punctuations="!',.? ",
    )
    extra: dict[str, object] = {}
    if speakers:
        (folder / "speakers.json").write_text(json.dumps({name: i for i, name in enumerate(SPEAKERS)}))
        (folder / "language_ids.json").write_text(json.dumps({name: i for i, name in enumerate(LANGUAGES)}))
        # Where the model was trained: the loader finds these files beside the model instead.
        extra = {
            "use_speaker_embedding": True,
            "speaker_embedding_channels": 8,
            "speakers_file": "/training/run/speakers.json",
            "use_language_embedding": True,
            "embedded_language_dim": 4,
            "language_ids_file": "/training/run/language_ids.json",
        }
    args = VitsArgs(
        hidden_channels=16,
        hidden_channels_ffn_text_encoder=32,
        num_heads_text_encoder=2,
        num_layers_text_encoder=1,
        resblock_type_decoder="2",
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3]],
        upsample_rates_decoder=[8, 8, 4],
        upsample_initial_channel_decoder=32,
        upsample_kernel_sizes_decoder=[16, 16, 8],
        num_layers_flow=1,
        num_layers_posterior_encoder=1,
        use_sdp=False,
        init_discriminator=False,
        **extra,
    )
    config = VitsConfig(
        model_args=args,
        characters=characters,
        use_phonemes=False,
        text_cleaner="basic_cleaners",
        add_blank=False,
    )
    config.audio.sample_rate = RATE
    config.audio.hop_length = 256
    config.audio.win_length = 1024
    config.audio.fft_size = 1024
    if speakers:
        config.use_speaker_embedding = True
        config.speakers_file = "/training/run/speakers.json"
        config.use_language_embedding = True
        config.language_ids_file = "/training/run/language_ids.json"
        # Vits reads them at init: point it at the real files while building.
        config.model_args.speakers_file = str(folder / "speakers.json")
        config.model_args.language_ids_file = str(folder / "language_ids.json")
    torch.manual_seed(0)
    with warnings.catch_warnings():  # init_from_config is deprecated, but it also sets up the speakers
        warnings.simplefilter("ignore", UserWarning)
        model = Vits.init_from_config(config)
    if speakers:
        config.model_args.speakers_file = "/training/run/speakers.json"
        config.model_args.language_ids_file = "/training/run/language_ids.json"
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, folder / "model.pth")
    config.save_json(str(folder / "config.json"))
    done.touch()
    return folder


def build_xtts(folder: Path) -> Path:
    """An XTTS model folder at `folder` (reused when complete)."""
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, models
    from TTS.tts.configs.xtts_config import XttsConfig  # type: ignore[import-untyped]
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer  # type: ignore[import-untyped]
    from TTS.tts.models.xtts import Xtts, XttsArgs  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{code}]" for code in LANGUAGES)]
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;\"()")
    vocab = {token: i for i, token in enumerate(specials + characters)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(folder / "vocab.json"))
    args = XttsArgs(
        gpt_layers=1,
        gpt_n_model_channels=32,
        gpt_n_heads=2,
        gpt_max_audio_tokens=XTTS_TOKENS,
        gpt_num_audio_tokens=66,
        gpt_start_audio_token=64,
        gpt_stop_audio_token=65,
        gpt_use_perceiver_resampler=True,
        decoder_input_dim=32,
    )
    config = XttsConfig(model_args=args, languages=LANGUAGES)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Xtts(config)
        model.tokenizer = VoiceBpeTokenizer(str(folder / "vocab.json"))
        model.init_models()
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    config.save_json(str(folder / "config.json"))
    # One preset voice, as speakers_xtts.pth holds them: its latents from a tone.
    tone = torch.sin(torch.arange(22050 * 2) * 0.05).unsqueeze(0) * 0.3
    with torch.inference_mode():
        latent = model.get_gpt_cond_latents(tone, 22050, length=12, chunk_length=4)
        embedding = model.get_speaker_embedding(tone, 22050)
    preset = {XTTS_SPEAKER: {"gpt_cond_latent": latent, "speaker_embedding": embedding}}
    torch.save(preset, folder / "speakers_xtts.pth")
    done.touch()
    return folder


def xtts() -> Path:
    return build_xtts(cache_root() / "tiny-xtts")


def single() -> Path:
    return build_vits(cache_root() / "tiny-vits")


def multi() -> Path:
    return build_vits(cache_root() / "tiny-vits-vctk", speakers=True)
