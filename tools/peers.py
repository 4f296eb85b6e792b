"""transformers' own pretraining classes as peers, built from configs at a multissl recipe's shape and
trained on the same examples for a given CPU time: ``RobertaForMaskedLM`` (text, BERT masking),
``Wav2Vec2ForPreTraining`` (speech: quantiser, contrastive loss with sampled negatives, diversity
loss, Gumbel temperature decay) and ``ViTMAEForPreTraining`` (vision, MAE's own initialisation
restored). Each returns an HF encoder folder that ``multissl probe`` reads."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from tools.bench_vision import mae_config, mae_init


class TrainingClock(TrainerCallback):
    """Stops training once ``budget`` CPU seconds of this process (all its threads) have gone into
    training; ``steps``, ``seconds`` (CPU) and ``wall_seconds`` say how far it got. CPU time, not the
    wall clock, so that another job on the machine does not hand one side of a comparison more
    compute than the other (data loading runs in the process: no loader workers on either side)."""

    def __init__(self, budget: float = float("inf")):
        self.budget, self.start, self.wall_start = budget, 0.0, 0.0
        self.steps, self.seconds, self.wall_seconds = 0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.wall_start = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps, self.seconds = state.global_step, time.process_time() - self.start
        self.wall_seconds = time.perf_counter() - self.wall_start
        if self.seconds >= self.budget:
            control.should_training_stop = True


def peer_arguments(train, output_dir: Path, seed: int, **extra):
    """TrainingArguments for a peer with the recipe's optimiser, batch and a constant learning rate
    after warm-up (the CPU-time budget, not max_steps, ends the run)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), max_steps=100000, per_device_train_batch_size=train.batch_size,
        learning_rate=train.lr, adam_beta1=train.betas[0], adam_beta2=train.betas[1], adam_epsilon=train.eps,
        weight_decay=train.weight_decay, lr_scheduler_type="constant_with_warmup", warmup_steps=train.warmup_steps,
        max_grad_norm=train.max_grad_norm, seed=seed, report_to="none", save_strategy="no", logging_steps=50,
        dataloader_drop_last=True, dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(), **extra)


def _train(model, dataset, collator, recipe, out: Path, seed: int, budget: float, callbacks=()) -> TrainingClock:
    from transformers import Trainer

    clock = TrainingClock(budget)
    Trainer(model=model, train_dataset=dataset, data_collator=collator,
            args=peer_arguments(recipe.train, out / "trainer", seed, remove_unused_columns=False),
            callbacks=[clock, *callbacks]).train()
    return clock


def roberta_mlm(recipe, dataset, tokenizer, out: Path, seed: int, budget: float) -> tuple[Path, TrainingClock]:
    from transformers import DataCollatorForLanguageModeling, RobertaConfig, RobertaForMaskedLM

    enc = recipe.encoder
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
        intermediate_size=enc.ffn_dim,
        max_position_embeddings=recipe.adapter["max_length"] + tokenizer.pad_token_id + 1,
        type_vocab_size=1, pad_token_id=tokenizer.pad_token_id, layer_norm_eps=enc.eps,
        hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attention_dropout))
    mlm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    clock = _train(model, dataset, lambda ex: mlm([{"input_ids": e["input_ids"]} for e in ex]), recipe, out, seed,
                   budget)
    model.roberta.save_pretrained(out / "export")
    tokenizer.save_pretrained(out / "export")
    return out / "export", clock


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

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
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


def wav2vec2(recipe, dataset, extractor, out: Path, seed: int, budget: float) -> tuple[Path, TrainingClock]:
    """At a small batch the paper's diversity weight (0.1) collapses the codebook; 0.3 stays stable."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    enc, a = recipe.encoder, recipe.adapter_config()  # typed: the recipe's keys over the defaults
    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(
        hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
        intermediate_size=enc.ffn_dim, conv_dim=tuple(a.conv_dim), conv_kernel=tuple(a.conv_kernel),
        conv_stride=tuple(a.conv_stride), feat_extract_norm="layer", conv_bias=False,
        do_stable_layer_norm=False, hidden_dropout=enc.dropout, attention_dropout=enc.attention_dropout,
        activation_dropout=enc.activation_dropout, feat_proj_dropout=0.0, layerdrop=0.0, diversity_loss_weight=0.3,
        mask_time_prob=0.65, mask_time_length=10, layer_norm_eps=enc.eps))
    clock = _train(model, dataset, Wav2Vec2PretrainingCollator(model), recipe, out, seed, budget,
                   [GumbelDecay(model)])
    model.wav2vec2.save_pretrained(out / "export")
    extractor.save_pretrained(out / "export")
    return out / "export", clock


def mae(recipe, dataset, processor, out: Path, seed: int, budget: float) -> tuple[Path, TrainingClock]:
    from transformers import ViTMAEForPreTraining

    a = recipe.adapter
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(mae_config(recipe.encoder, a["image_size"], a["patch_size"]))
    mae_init(model)
    clock = _train(model, dataset, lambda ex: {"pixel_values": torch.stack([e["pixel_values"] for e in ex])},
                   recipe, out, seed, budget)
    model.vit.config.mask_ratio = 0.0  # frozen features of every patch (order is shuffled; pooling ignores it)
    model.vit.save_pretrained(out / "export")
    processor.save_pretrained(out / "export")
    return out / "export", clock


PEERS = {"text": ("HF RobertaForMaskedLM", roberta_mlm), "audio": ("HF Wav2Vec2ForPreTraining", wav2vec2),
         "vision": ("HF ViTMAEForPreTraining", mae)}
