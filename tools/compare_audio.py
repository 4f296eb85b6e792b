"""Equal CPU wall-clock for multissl data2vec 2.0 and transformers' wav2vec 2.0 pretraining
(``Wav2Vec2ForPreTraining``: quantizer, contrastive loss with 100 negatives, diversity loss, the HF
speech-pretraining example's masking and Gumbel temperature decay), on the same spoken corpus,
encoder shape (recipes/audio/tiny.yaml), batch and learning rate; then the same probes on labelled
speech that neither saw: spoken digit words (which word) in voices unseen in pretraining.

The corpus is synthetic (espeak-ng reading King James verses): good for comparing methods under the
same conditions, not for claims about real speech.

    python tools/compare_audio.py [--budget 300] [--seeds 0 1] [--verses 400] [--out runs/compare_audio]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.compare_text import WallClock, peer_arguments  # noqa: E402


class GumbelDecay(TrainerCallback):
    """The HF example's schedule: temperature 2.0 * 0.999995^step, floored at 0.5."""

    def __init__(self, model):
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        self.model.set_gumbel_temperature(max(2.0 * 0.999995 ** state.global_step, 0.5))


class Wav2Vec2PretrainingCollator:
    """Pads like multissl's collator, then wav2vec 2.0's span masks and sampled negatives."""

    def __init__(self, model, mask_prob: float = 0.65, mask_length: int = 10):
        self.model, self.mask_prob, self.mask_length = model, mask_prob, mask_length

    def __call__(self, examples):
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        n = max(len(e["input_values"]) for e in examples)
        x = np.zeros((len(examples), n), np.float32)
        att = np.zeros((len(examples), n), np.int64)
        for i, e in enumerate(examples):
            x[i, : len(e["input_values"])], att[i, : len(e["input_values"])] = e["input_values"], 1
        att_t = torch.from_numpy(att)
        t = int(self.model._get_feat_extract_output_lengths(n))
        frames = self.model._get_feature_vector_attention_mask(t, att_t)
        mask = _compute_mask_indices((len(examples), t), self.mask_prob, self.mask_length,
                                     attention_mask=frames, min_masks=2)
        neg = _sample_negative_indices((len(examples), t), self.model.config.num_negatives, mask_time_indices=mask)
        return {"input_values": torch.from_numpy(x), "attention_mask": att_t,
                "mask_time_indices": torch.from_numpy(mask), "sampled_negative_indices": torch.from_numpy(neg)}


def main() -> None:
    from transformers import Trainer, Wav2Vec2Config, Wav2Vec2ForPreTraining

    from multissl.config import load_recipe
    from multissl.export.hf import export
    from multissl.probe import accuracy, probe
    from multissl.train import build_model, pretrain
    from tools.make_speech import VARIANTS, digits, verses

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per method and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--verses", type=int, default=400)
    p.add_argument("--out", default="runs/compare_audio")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    probe_variants = ("+m3", "+klatt")  # no verse is read in these voices
    verses(out / "verses", args.verses, variants=tuple(v for v in VARIANTS if v not in probe_variants))
    labelled = digits(out / "digits", variants=probe_variants)
    common = ["--data", str(out / "verses"), "--report_to", "none", "--schedule", "constant_with_warmup",
              "--max_steps", "100000", "--save_steps", "100000"]
    results = []
    for seed in args.seeds:
        recipe = load_recipe(ROOT / "recipes/audio/tiny.yaml",
                             [*common, "--seed", str(seed), "--output_dir", str(out / f"d2v2-{seed}")])
        clock = WallClock(args.budget)
        runs = [("multissl data2vec 2.0", export(pretrain(recipe, callbacks=[clock]), out / f"d2v2-{seed}-export"),
                 clock.steps)]

        _, _, dataset, _, fe = build_model(load_recipe(ROOT / "recipes/audio/tiny.yaml",
                                                       [*common, "--output_dir", "unused"]))
        enc, t, a = recipe.encoder, recipe.train, recipe.adapter
        torch.manual_seed(seed)
        w2v = Wav2Vec2ForPreTraining(Wav2Vec2Config(
            hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
            intermediate_size=enc.ffn_dim, conv_dim=tuple(a["conv_dim"]), conv_kernel=tuple(a["conv_kernel"]),
            conv_stride=tuple(a["conv_stride"]), feat_extract_norm="layer", conv_bias=False,
            do_stable_layer_norm=False, hidden_dropout=enc.dropout, attention_dropout=enc.attention_dropout,
            activation_dropout=enc.activation_dropout, feat_proj_dropout=0.0, layerdrop=0.0,
            mask_time_prob=0.65, mask_time_length=10, layer_norm_eps=enc.eps))
        clock = WallClock(args.budget)
        trainer = Trainer(
            model=w2v, train_dataset=dataset, data_collator=Wav2Vec2PretrainingCollator(w2v),
            args=peer_arguments(t, out / f"w2v-{seed}", seed, remove_unused_columns=False),
            callbacks=[clock, GumbelDecay(w2v)])
        trainer.train()
        w2v_dir = out / f"w2v-{seed}-export"
        w2v.wav2vec2.save_pretrained(w2v_dir)
        fe.save_pretrained(w2v_dir)
        runs.append(("HF Wav2Vec2ForPreTraining", w2v_dir, clock.steps))

        for name, model_dir, steps in runs:
            res = probe(model_dir, labelled, label_column="label", input_column="path", test_size=0.25, seed=seed)
            results.append((name, seed, steps, accuracy(res, "pretrained"),
                            accuracy(res, "pretrained", "layer-weighted"), accuracy(res, "random init"),
                            accuracy(res, "random init", "layer-weighted"), accuracy(res, "majority class")))

    print(f"\nequal wall-clock: {args.budget:.0f} s of training per method and seed, {torch.get_num_threads()} "
          f"threads; probe: which of 10 spoken digit words, voices unseen in pretraining")
    print(f"{'method':<28} {'seed':>4} {'updates':>8} {'last':>7} {'weighted':>9} {'rnd last':>9} "
          f"{'rnd wtd':>8} {'majority':>9}")
    for name, seed, steps, *accs in results:
        print(f"{name:<28} {seed:>4} {steps:>8} " + " ".join(f"{v:>{w}.4f}" for v, w in
                                                              zip(accs, (7, 9, 9, 8, 9), strict=True)))
    for name in ("multissl data2vec 2.0", "HF Wav2Vec2ForPreTraining"):
        rows = [r for r in results if r[0] == name]
        print(f"mean {name}: last layer {np.mean([r[3] for r in rows]):.4f}, layer-weighted "
              f"{np.mean([r[4] for r in rows]):.4f} over {len(rows)} seed(s)")


if __name__ == "__main__":
    main()
