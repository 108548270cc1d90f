"""A KittenTTS-shaped model folder for the tests: no real Kitten weights ship in any package.

`build(folder)` writes what a KittenTTS ONNX repository holds: `config.json` (type ONNX1, voice
aliases), `voices.npz` (a [400, 256] style table for each of the eight voices) and an ONNX graph with
Kitten's input/output contract: input_ids int64[1,T], style float32[1,256], speed float32[1] ->
waveform float32[N]. Every token becomes `SAMPLES_PER_TOKEN` samples of seeded noise, shifted by the
voice's style and scaled by the speed, so the audio is noise whose length grows with the text (as a real
model's does) and depends on the voice: enough to test everything but the words. The same seed writes
the same files, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: kittenml's voices (KittenTTS_1_Onnx.available_voices) and their aliases in the real configs
VOICES = [
    "expr-voice-2-m",
    "expr-voice-2-f",
    "expr-voice-3-m",
    "expr-voice-3-f",
    "expr-voice-4-m",
    "expr-voice-4-f",
    "expr-voice-5-m",
    "expr-voice-5-f",
]
ALIASES = {
    "Bella": "expr-voice-2-f",
    "Jasper": "expr-voice-2-m",
    "Luna": "expr-voice-3-f",
    "Bruno": "expr-voice-3-m",
    "Rosie": "expr-voice-4-f",
    "Hugo": "expr-voice-4-m",
    "Kiki": "expr-voice-5-f",
    "Leo": "expr-voice-5-m",
}
#: 0.1 s at 24 kHz a token, about a phoneme's length; kittenml cuts the last 5,000 samples of each run
SAMPLES_PER_TOKEN = 2400
VOCAB = 256  # more than kittenml's TextCleaner symbols
STYLE = 256


def graph(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.RandomState(seed)
    table = (rng.randn(VOCAB, SAMPLES_PER_TOKEN) * 0.2).astype(np.float32)
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"], axis=0),  # [1, T, SAMPLES]
        helper.make_node("Reshape", ["rows", "flat"], ["noise"]),  # [T * SAMPLES]
        helper.make_node("ReduceMean", ["style"], ["shift"], keepdims=0),  # scalar
        helper.make_node("Add", ["noise", "shift"], ["voiced"]),
        helper.make_node("Mul", ["voiced", "speed"], ["loud"]),
        helper.make_node("Mul", ["loud", "half"], ["waveform"]),
    ]
    body = helper.make_graph(
        nodes,
        "fake_kitten",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, STYLE]),
            helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["N"])],
        initializer=initializers,
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(folder: Path, seed: int = 0, voices: list[str] = VOICES, kind: str = "ONNX1") -> Path:
    """A KittenTTS model folder at `folder` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(graph(seed), str(folder / "kitten_tts_fake.onnx"))
    rng = np.random.RandomState(seed + 1)
    # Each voice's styles sit around its own mean, so voices sound (and measure) apart.
    tables = {
        v: (rng.randn(400, STYLE) * 0.05 + (i - 3.5) * 0.05).astype(np.float32) for i, v in enumerate(voices)
    }
    np.savez(folder / "voices.npz", **tables)  # type: ignore[arg-type]
    config = {
        "type": kind,
        "model_file": "kitten_tts_fake.onnx",
        "voices": "voices.npz",
        "voice_aliases": {alias: voice for alias, voice in ALIASES.items() if voice in voices},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
