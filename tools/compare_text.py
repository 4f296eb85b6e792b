"""Equal CPU wall-clock for multissl data2vec 2.0 (and v1) and the HF masked-LM peer (RobertaForMaskedLM with
DataCollatorForLanguageModeling), on the same encoder shape, tokenizer, packed blocks, batch and
learning rate, then the same linear probe on labelled verses that neither saw during pretraining
(which of the Bible's six sections a verse comes from).

    python tools/compare_text.py [--budget 300] [--seeds 0 1] [--out runs/compare_text]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tools.demo


class WallClock(TrainerCallback):
    """Stops training once ``budget`` seconds of training have passed."""

    def __init__(self, budget: float):
        self.budget, self.start, self.steps = budget, 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        if time.perf_counter() - self.start >= self.budget:
            control.should_training_stop = True
            control.should_save = True


def peer_arguments(train, output_dir: Path, seed: int, **extra):
    """TrainingArguments for a peer with the recipe's optimiser, batch and a constant learning rate
    after warm-up (the wall clock, not max_steps, ends the run)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), max_steps=100000, per_device_train_batch_size=train.batch_size,
        learning_rate=train.lr, adam_beta1=train.betas[0], adam_beta2=train.betas[1], adam_epsilon=train.eps,
        weight_decay=train.weight_decay, lr_scheduler_type="constant_with_warmup", warmup_steps=train.warmup_steps,
        max_grad_norm=train.max_grad_norm, seed=seed, report_to="none", save_strategy="no", logging_steps=50,
        dataloader_drop_last=True, dataloader_pin_memory=False, **extra)


def main() -> None:
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        RobertaConfig,
        RobertaForMaskedLM,
        Trainer,
    )

    from multissl.config import load_recipe
    from multissl.export.hf import export
    from multissl.modalities.text import load_tokenizer
    from multissl.probe import accuracy, probe
    from multissl.tokenizer import train_tokenizer
    from multissl.train import build_model, pretrain
    from tools.demo import split_corpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per method and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/compare_text")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    corpus, labelled = split_corpus(out)
    train_tokenizer([corpus], out / "tokenizer", kind="bpe", vocab_size=8000)
    tok = load_tokenizer(str(out / "tokenizer"))
    common = ["--data", str(corpus), "--tokenizer", str(out / "tokenizer"), "--report_to", "none",
              "--schedule", "constant_with_warmup", "--max_steps", "100000", "--save_steps", "100000"]
    results = []
    for seed in args.seeds:
        runs = []
        for name, recipe_file in (("multissl data2vec 2.0", "tiny-v2.yaml"), ("multissl data2vec v1", "tiny.yaml")):
            recipe = load_recipe(ROOT / "recipes/text" / recipe_file,
                                 [*common, "--seed", str(seed), "--output_dir", str(out / f"{recipe_file}-{seed}")])
            clock = WallClock(args.budget)
            run_dir = pretrain(recipe, callbacks=[clock])
            runs.append((name, export(run_dir, out / f"{recipe_file}-{seed}-export"), clock.steps))

        # HF masked LM on the same blocks, shape, batch and learning rate
        _, _, dataset, _, _ = build_model(load_recipe(ROOT / "recipes/text/tiny-v2.yaml",
                                                      [*common, "--output_dir", "unused"]))
        enc, t = recipe.encoder, recipe.train
        torch.manual_seed(seed)
        mlm = RobertaForMaskedLM(RobertaConfig(
            vocab_size=len(tok), hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
            intermediate_size=enc.ffn_dim, max_position_embeddings=recipe.adapter["max_length"] + tok.pad_token_id + 1,
            type_vocab_size=1, pad_token_id=tok.pad_token_id, layer_norm_eps=enc.eps,
            hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attention_dropout))
        clock = WallClock(args.budget)
        trainer = Trainer(
            model=mlm, train_dataset=dataset.ds,
            data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15),
            args=peer_arguments(t, out / f"mlm-{seed}", seed),
            callbacks=[clock])
        trainer.train()
        mlm_dir = out / f"mlm-{seed}-export"
        mlm.roberta.save_pretrained(mlm_dir)
        tok.save_pretrained(mlm_dir)

        for name, model_dir, steps in [*runs, ("HF RobertaForMaskedLM", mlm_dir, clock.steps)]:
            res = probe(model_dir, labelled, label_column="section", test_size=0.25, seed=seed)
            results.append((name, seed, steps, accuracy(res, "pretrained"), accuracy(res, "random init"),
                            accuracy(res, "majority class")))

    print(f"\nequal wall-clock: {args.budget:.0f} s of training per method and seed, "
          f"{torch.get_num_threads()} threads; probe: 6-way section of held-out verses")
    print(f"{'method':<24} {'seed':>4} {'updates':>8} {'probe acc':>10} {'random init':>12} {'majority':>9}")
    for name, seed, steps, acc, rnd, maj in results:
        print(f"{name:<24} {seed:>4} {steps:>8} {acc:>10.4f} {rnd:>12.4f} {maj:>9.4f}")
    for name in ("multissl data2vec 2.0", "multissl data2vec v1", "HF RobertaForMaskedLM"):
        accs = [r[3] for r in results if r[0] == name]
        print(f"mean {name}: {sum(accs) / len(accs):.4f} over {len(accs)} seed(s)")


if __name__ == "__main__":
    main()
