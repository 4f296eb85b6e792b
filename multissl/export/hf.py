"""Export a run's encoder as a Hugging Face model folder that ``AutoModel.from_pretrained`` loads with
the same outputs. The folder is written to a temporary path, checked against multissl's encoder,
then renamed into place."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from multissl.export.card import last_metrics, model_card
from multissl.runs import EXPORT_KEY, PREPROCESSOR_DIR, export_info, load_run_model
from multissl.staging import staged_folder

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


@torch.no_grad()
def check_task_parity(model: torch.nn.Module, hf_task: torch.nn.Module, modality, preprocessor, atol: float) -> float:
    """Largest absolute difference between the objective's head outputs and the exported task
    class's ``logits`` (non-padding positions) on the adapter's example inputs; raises above ``atol``."""
    hf_inputs, ours = modality.example_inputs(preprocessor)
    mine = model.eval().task_logits(ours)
    theirs = hf_task.eval()(**hf_inputs).logits
    valid = ~model.encoder(ours)[1][:, model.encoder.num_extra:]
    diff = float((mine - theirs)[valid].abs().max())
    if diff > atol * 10:  # logits are sums over the vocabulary's width: a looser bound
        raise ParityError(f"exported {type(hf_task).__name__} differs from the objective's head by {diff:.2e}")
    return diff


def export(run_dir: str | Path, out_dir: str | Path, which: str | None = None, arch: str | None = None,
           overwrite: bool = False, atol: float = 1e-4) -> Path:
    """Write the encoder of ``run_dir`` to ``out_dir`` as an HF model folder, with its preprocessor
    and a model card. ``which``: ``"student"`` or ``"teacher"``; None takes the one the objective's
    paper evaluates (``Method.evaluated_encoder``: the student for most, I-JEPA's target encoder) unless
    the method's config says otherwise (``Method.exported_encoder``).

    >>> export("runs/t1", "out/t1")  # doctest: +SKIP
    >>> AutoModel.from_pretrained("out/t1")  # doctest: +SKIP
    """
    import transformers
    from transformers import AutoModel

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    if which not in (None, "student", "teacher"):
        raise ValueError(f"--which must be student or teacher, got {which!r}")
    recipe, modality, model = load_run_model(run_dir)
    which = which or model.exported_encoder()
    encoder = (model.encoder if which == "student" else model.teacher_encoder()).eval()
    task = model.hf_task() if which == "student" else None  # the teacher has no head of its own
    hf_cfg = modality.hf_config(recipe.encoder, arch)
    state = modality.to_hf_state_dict(encoder.state_dict(), recipe.encoder)
    if task is None:
        hf_model = AutoModel.from_config(hf_cfg)
    else:  # the objective's head class, the encoder under its base-model prefix
        hf_model = getattr(transformers, task[0]).from_config(hf_cfg)
        state = {f"{hf_model.base_model_prefix}.{k}": v for k, v in state.items()} | task[1]
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
        if task is not None:
            diff = check_task_parity(model, getattr(transformers, task[0]).from_pretrained(tmp), modality,
                                     preprocessor, atol)
            log.info("export parity: max abs difference %.2e over the %s logits", diff, task[0])
        for name, text in model.hf_extra_files().items():  # what the objective adds (sentence-transformers' files)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        card = model_card(recipe, type(reloaded).__name__, which, last_metrics(run_dir), out.name)
        (tmp / "README.md").write_text(card)
        whole = model.hf_pretraining(recipe.mask) if which == "student" else None
        if whole is not None:  # the whole pretraining model, for continuing it with transformers
            whole.save_pretrained(tmp / "pretraining")
    return out
