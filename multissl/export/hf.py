"""Export a run's encoder as a Hugging Face model folder that ``AutoModel.from_pretrained`` loads with
the same outputs. The folder is written to a temporary path, checked against multissl's encoder,
then renamed into place."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from multissl.export.card import last_metrics, model_card
from multissl.runs import EXPORT_KEY, export_info
from multissl.staging import staged_folder
from multissl.train import PREPROCESSOR_DIR, load_run

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The exported model does not reproduce multissl's encoder."""


@torch.no_grad()
def check_parity(encoder: torch.nn.Module, hf_model: torch.nn.Module, modality, preprocessor, atol: float) -> float:
    """Largest absolute difference over all hidden states and the output (non-padding positions)
    between the multissl encoder and the HF model on the adapter's example inputs; raises above
    ``atol``."""
    hf_inputs, ours = modality.example_inputs(preprocessor)
    states, pad = encoder.eval()(ours)
    hf_states = hf_model.eval()(**hf_inputs, output_hidden_states=True).hidden_states
    if len(states) != len(hf_states):
        raise ParityError(f"{len(hf_states)} HF hidden states, multissl has {len(states)}")
    valid = ~pad
    last = hf_model(**hf_inputs).last_hidden_state
    pairs = [*zip(states, hf_states, strict=True), (encoder.norm(states[-1]), last)]
    diff = max(float((a - b)[valid].abs().max()) for a, b in pairs)
    if diff > atol:
        raise ParityError(f"exported model differs from the multissl encoder by {diff:.2e} (> {atol})")
    return diff


def export(run_dir: str | Path, out_dir: str | Path, which: str = "student", arch: str | None = None,
           overwrite: bool = False, atol: float = 1e-4) -> Path:
    """Write the encoder of ``run_dir`` to ``out_dir`` as an HF model folder, with its preprocessor
    and a model card.

    >>> export("runs/t1", "out/t1")  # doctest: +SKIP
    >>> AutoModel.from_pretrained("out/t1")  # doctest: +SKIP
    """
    from transformers import AutoModel

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    recipe, modality, encoder = load_run(run_dir, which)
    hf_cfg = modality.hf_config(recipe.encoder, arch)
    hf_model = AutoModel.from_config(hf_cfg)
    state = modality.to_hf_state_dict(encoder.state_dict(), recipe.encoder)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(modality.hf_untrained)]
    if missing or unexpected:
        raise ParityError(f"HF {type(hf_model).__name__} does not fit: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    hf_model.config.update({EXPORT_KEY: export_info()})  # the layout version, for whoever reads it later
    with staged_folder(out) as tmp:
        hf_model.save_pretrained(tmp)
        preprocessor = None
        pre_dir = run_dir / PREPROCESSOR_DIR
        if pre_dir.is_dir():
            for f in pre_dir.iterdir():
                shutil.copy(f, tmp / f.name)
            preprocessor = modality.load_preprocessor(tmp)
        reloaded = AutoModel.from_pretrained(tmp)
        diff = check_parity(encoder, reloaded, modality, preprocessor, atol)
        log.info("export parity: max abs difference %.2e over all hidden states", diff)
        card = model_card(recipe, type(reloaded).__name__, which, last_metrics(run_dir), out.name)
        (tmp / "README.md").write_text(card)
    return out
