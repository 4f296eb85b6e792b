"""Encoders and data for the curation tests: a multissl text export (a few training steps on the
King James Bible), tiny randomly initialised HF image and speech encoders (the checkpoints
``--init_from`` takes), real images (scikit-learn's digits) and real decoded speech (espeak-ng)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def text_export(tmp_path_factory, kjv_file, tokenizer_dir) -> Path:
    from multissl.export.hf import export
    from multissl.recipe import load_recipe
    from multissl.train import pretrain
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("text-export")
    recipe = load_recipe("recipes/text/tiny.yaml", [*TINY, "--data", str(kjv_file), "--tokenizer", str(tokenizer_dir),
                                                    "--output_dir", str(root / "run"), "--max_steps", "2"])
    return export(pretrain(recipe), root / "export")


@pytest.fixture(scope="session")
def verses_file(tmp_path_factory, kjv_rows) -> Path:
    """240 labelled verses (testament) as JSON lines."""
    path = tmp_path_factory.mktemp("verses") / "verses.jsonl"
    with open(path, "w") as fh:
        for r in kjv_rows[::130][:240]:
            fh.write(json.dumps({"text": r["text"], "label": r["testament"]}) + "\n")
    return path


@pytest.fixture(scope="session")
def vision_checkpoint(tmp_path_factory) -> Path:
    """A tiny ViT at random init with its image processor, as an HF checkpoint folder."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = tmp_path_factory.mktemp("vit") / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=16, patch_size=4), add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def audio_checkpoint(tmp_path_factory) -> Path:
    """A tiny Data2VecAudio encoder at random init with its feature extractor."""
    import torch
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, Wav2Vec2FeatureExtractor

    out = tmp_path_factory.mktemp("d2va") / "d2va"
    torch.manual_seed(0)
    Data2VecAudioModel(Data2VecAudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=4,
                                           num_conv_pos_embedding_groups=4)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def digit_folders(tmp_path_factory, image_dirs) -> Path:
    """Held-out digit images in one sub-folder per class (the folder name is the label)."""
    import csv

    _, labels, _ = image_dirs
    out = tmp_path_factory.mktemp("digit-classes") / "digits"
    with open(labels) as fh:
        for row in list(csv.DictReader(fh))[:150]:
            (out / row["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(labels.parent / row["path"], out / row["label"] / row["path"])
    return out
