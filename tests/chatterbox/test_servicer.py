"""chatterbox over real gRPC without weights: what LoadModel refuses, and its options' ranges.

Everything here is decided before any weight is read, or by the engine on files that are not a usable
checkpoint; synthesis on the full-size random checkpoint is in test_synthesis.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import serving
from localfleet_chatterbox.servicer import BUILTIN, FILES, Chatterbox

pytestmark = pytest.mark.asyncio


def checkpoint(folder: Path, *extra: str) -> Path:
    """A folder with a checkpoint's file names (and `extra` ones), each holding nothing usable."""
    folder.mkdir(parents=True)
    for name in (*FILES, *extra):
        (folder / name).write_bytes(b"not a tensor file")
    return folder


async def test_loadmodel_refuses_what_is_not_a_chatterbox_checkpoint(tmp_path: Path) -> None:
    partial = checkpoint(tmp_path / "partial", BUILTIN)
    (partial / "s3gen.safetensors").unlink()
    voiceless = checkpoint(tmp_path / "voiceless")
    async with serving(Chatterbox()) as served:
        for name, audio_path, reason in [
            ("llama-3-8b.Q4_K_M.gguf", "", "no Chatterbox checkpoint at"),
            ("ResembleAI/chatterbox", "", "downloads nothing"),
            (str(partial), "", "t3_cfg.safetensors, s3gen.safetensors, tokenizer.json"),
            (str(voiceless), "", "voiceless has no built-in voice (conds.pt): name a reference recording"),
            (str(voiceless), "alice.wav", "AudioPath file not found"),
        ]:
            request = pb.ModelOptions(Model=name, AudioPath=audio_path, ModelPath=str(tmp_path))
            result = await served.client.backend.LoadModel(request)
            assert not result.success, name
            assert reason in result.message, result.message
        assert await served.client.healthy()


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("exaggeration:2.5", "less than or equal to 2"),
        ("exaggeration:-0.1", "greater than or equal to 0"),
        ("cfg_weight:1.5", "less than or equal to 1"),
        ("temperature:0", "greater than or equal to 0.05"),
        ("temperature:nan", "temperature"),
        ("repetition_penalty:0.5", "greater than or equal to 1"),
        ("min_p:2", "less than or equal to 1"),
        ("top_p:0", "greater than 0"),
        ("max_speech_tokens:0", "greater than or equal to 1"),
        ("max_speech_tokens:5000", "less than or equal to 4096"),
        ("flow_steps:0", "greater than or equal to 1"),
        ("seed:-1", "greater than or equal to 0"),
        ("max_chars:0", "greater than or equal to 1"),
        ("exagerration:1", "exagerration"),
    ],
)
async def test_options_out_of_range_are_refused_before_loading(
    tmp_path: Path, option: str, reason: str
) -> None:
    folder = checkpoint(tmp_path / "chatterbox", BUILTIN)
    async with serving(Chatterbox()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(folder), Options=[option]))
        assert not result.success
        assert reason in result.message, result.message
        assert "cannot load" not in result.message  # refused by the options, not by the engine
        assert (
            await served.client.backend.Status(pb.HealthMessage())
        ).state == pb.StatusResponse.UNINITIALIZED


async def test_the_engine_refuses_other_checkpoints_and_unreadable_ones(tmp_path: Path) -> None:
    multilingual = checkpoint(tmp_path / "multilingual", BUILTIN, "t3_mtl23ls_v2.safetensors")
    broken = checkpoint(tmp_path / "broken", BUILTIN)
    async with serving(Chatterbox()) as served:
        for folder, reason in [
            (multilingual, "holds Chatterbox Multilingual (t3_mtl23ls_v2.safetensors); this backend serves"),
            (broken, f"cannot load the checkpoint in {broken}"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(folder)))
            assert not result.success, folder
            assert reason in result.message, result.message
        # A request without a model is refused, and the backend serves on.
        assert await served.client.healthy()
