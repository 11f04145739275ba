"""Tiny random vision and speech towers with inputs of their own kind, for the patcher's coverage report.

Each entry of :data:`TOWERS` builds one model from its type's default config, shrunk by
:func:`bench.tiny_models.tiny_config` (every dropout probability :data:`~bench.tiny_models.P`) with
the input geometry made small too, and a batch of two examples of the inputs it takes: images
(``pixel_values``), log-mel features and decoder ids (``input_features``, ``decoder_input_ids``) or
raw audio (``input_values``). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from bench.tiny_models import SEQ_LEN, tiny_config

IMAGE = 32
PATCH = 8
MEL_FRAMES = 32
AUDIO_SAMPLES = 4000  # 12 frames after Wav2Vec2's feature encoder (stride 320)


def _pixels(channels: int = 3) -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * channels * IMAGE * IMAGE).reshape(2, channels, IMAGE, IMAGE)


def _ids(vocab: int, rows: int = 2) -> torch.Tensor:
    return (torch.arange(rows * SEQ_LEN).reshape(rows, SEQ_LEN) * 5 + 3) % max(vocab - 4, 1) + 4


def _vit(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = tiny_config("vit", image_size=IMAGE, patch_size=PATCH, num_labels=2)
    model = transformers.ViTForImageClassification._from_config(config, attn_implementation=impl)
    return model, {"pixel_values": _pixels(config.num_channels)}


def _clip(impl: str, tower: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = tiny_config("clip", **{"vision_config.image_size": IMAGE, "vision_config.patch_size": PATCH})
    if tower == "text":
        text = config.text_config
        model = transformers.CLIPTextModel._from_config(text, attn_implementation=impl)
        ids = _ids(text.vocab_size)
        ids[:, -1] = text.eos_token_id  # the pooled output is read at the end-of-text token
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    vision = config.vision_config
    model = transformers.CLIPVisionModel._from_config(vision, attn_implementation=impl)
    return model, {"pixel_values": _pixels(vision.num_channels)}


def _whisper(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    # the encoder's two convolutions halve the frames: its positions cover MEL_FRAMES / 2
    config = tiny_config("whisper", max_source_positions=MEL_FRAMES // 2, max_target_positions=64)
    model = transformers.WhisperForConditionalGeneration._from_config(config, attn_implementation=impl)
    features = torch.linspace(-1, 1, 2 * config.num_mel_bins * MEL_FRAMES).reshape(2, config.num_mel_bins, MEL_FRAMES)
    ids = _ids(config.vocab_size)
    ids[:, 0] = config.decoder_start_token_id
    return model, {"input_features": features, "decoder_input_ids": ids, "use_cache": False}


def _wav2vec2(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = tiny_config(
        "wav2vec2",
        conv_dim=[16] * 7,  # the feature encoder's channels (512 by default)
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=32,
    )
    model = transformers.Wav2Vec2ForCTC._from_config(config, attn_implementation=impl)
    audio = torch.sin(torch.arange(2 * AUDIO_SAMPLES, dtype=torch.float32) * 0.05).reshape(2, AUDIO_SAMPLES)
    return model, {"input_values": audio}


@dataclass(frozen=True)
class Tower:
    """One tower: its model type, head, what it reads, and ``make(impl) -> (model in eval mode, inputs)``."""

    name: str
    model_type: str
    head: str
    inputs: str
    make: Callable[[str], tuple[torch.nn.Module, dict[str, Any]]]

    def build(self, impl: str = "eager", seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
        torch.manual_seed(seed)
        model, inputs = self.make(impl)
        return model.eval(), inputs

    def supports_sdpa(self) -> bool:
        model, _ = self.build("eager")
        return bool(getattr(model, "_supports_sdpa", False))


TOWERS = {
    t.name: t
    for t in (
        Tower("vit", "vit", "image-cls", "pixel_values", _vit),
        Tower("clip-text", "clip", "text tower", "input_ids", lambda impl: _clip(impl, "text")),
        Tower("clip-vision", "clip", "vision tower", "pixel_values", lambda impl: _clip(impl, "vision")),
        Tower("whisper", "whisper", "speech seq2seq", "input_features, decoder_input_ids", _whisper),
        Tower("wav2vec2", "wav2vec2", "ctc", "input_values", _wav2vec2),
    )
}
"""The vision and speech towers of the report (issue 15, item 6)."""
