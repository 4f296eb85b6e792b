"""Images trained per second for multissl's vision objectives against the student alone and
transformers' MAE (``ViTMAEForPreTraining``), in one run, on the same encoder shape, batch and real
photos (scikit-image's, through the training crop).

Rows: the student encoder's plain forward+backward (no teacher), multissl data2vec v1 (dense student,
BEiT block masks, teacher pass, regression head, EMA), multissl data2vec 2.0 with M clones (sparse
student, inverse block masks, one teacher pass per image, a 2-D conv decoder, CLS loss, EMA), and
ViTMAEForPreTraining (75% masked, a light Transformer decoder, pixel loss). Every row includes the
AdamW step. Rounds interleave the rows so machine noise hits them alike; the median is reported.

    python tools/bench_vision.py [--dim 192 --depth 6 --image 224 --patch 16 --batch 8 --clones 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mae_init(model) -> None:
    """MAE's own initialisation, which ViTMAEForPreTraining(config) leaves at zero: 2-D sin-cos
    position tables (encoder and decoder) and normal(0.02) CLS and mask tokens."""
    from transformers.models.vit_mae import modeling_vit_mae as m

    def table(pos: torch.Tensor, grid: int) -> torch.Tensor:
        t = m.build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=pos.shape[-1], cls_token=True)
        half = t.shape[-1] // 2
        return torch.cat([t[..., half:], t[..., :half]], dim=-1).unsqueeze(0)

    grid = int(model.vit.embeddings.patch_embeddings.num_patches ** 0.5)
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(table(model.vit.embeddings.position_embeddings, grid))
        model.decoder.decoder_pos_embed.copy_(table(model.decoder.decoder_pos_embed, grid))
        model.vit.embeddings.cls_token.normal_(std=0.02)
        model.decoder.mask_token.normal_(std=0.02)


def mae_config(enc, image: int, patch: int, **kw):
    from transformers import ViTMAEConfig

    return ViTMAEConfig(hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
                        intermediate_size=enc.ffn_dim, layer_norm_eps=enc.eps, image_size=image, patch_size=patch,
                        decoder_hidden_size=enc.dim, decoder_num_hidden_layers=2, decoder_num_attention_heads=enc.heads,
                        decoder_intermediate_size=enc.ffn_dim, mask_ratio=0.75, norm_pix_loss=True, **kw)


def main() -> None:
    from PIL import Image
    from transformers import ViTMAEForPreTraining

    from multissl.core.blocks import EncoderConfig
    from multissl.core.decoder import DecoderConfig
    from multissl.core.ema import EMAConfig
    from multissl.core.mae_decoder import MAEDecoderConfig
    from multissl.data.masking import MaskConfig
    from multissl.methods.data2vec import Data2Vec, Data2VecConfig
    from multissl.methods.mae import MAE, MAEConfig
    from multissl.modalities.vision.data import ImageCollator, train_transform
    from multissl.modalities.vision.model import Vision, VisionConfig
    from tools.make_images import photos
    from tools.step_bench import report, run_rounds, training_step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--clones", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = VisionConfig(image_size=args.image, patch_size=args.patch)
    with tempfile.TemporaryDirectory() as d:
        images = [Image.open(f).convert("RGB") for f in photos(Path(d))]
    rng = np.random.default_rng(0)
    pixels = [train_transform(images[i % len(images)], cfg, rng) for i in range(args.batch * (args.rounds + 2))]
    enc = EncoderConfig(dim=args.dim, depth=args.depth, heads=args.heads, ffn_dim=4 * args.dim, norm="pre", eps=1e-6,
                        dropout=0.0, attention_dropout=0.0)
    decoder = DecoderConfig(layers=3, kernel=3, dim=args.dim, groups=16, residual=True, projection_layers=1,
                            input_dropout=0.0)
    ema = EMAConfig(0.9998, 0.99999, 1000)

    def d2v(version: int, clones: int):
        torch.manual_seed(0)
        vcfg = VisionConfig(image_size=args.image, patch_size=args.patch, mask_embedding=version == 1)
        method = Data2VecConfig(version=version, clones=clones, top_k=args.depth, decoder=decoder, ema=ema,
                                target="block" if version == 1 else "ffn",
                                target_norm="layer" if version == 1 else "instance", final_norm="layer",
                                loss_beta=2.0 if version == 1 else 0.0, cls_loss=0.0 if version == 1 else 0.01)
        return Data2Vec(Vision(vcfg), enc, method).train()

    v1, v2 = d2v(1, 1), d2v(2, args.clones)
    student = d2v(1, 1).encoder
    coll_v1 = ImageCollator(MaskConfig(kind="beit", prob=0.6, length=16, aspect=0.3), cfg, clones=1)
    coll_v2 = ImageCollator(MaskConfig(kind="inverse_block", prob=0.8, length=3, adjust=0.07), cfg, clones=args.clones)
    torch.manual_seed(0)
    mae = ViTMAEForPreTraining(mae_config(enc, args.image, args.patch)).train()
    mae_init(mae)
    torch.manual_seed(0)  # multissl's MAE with the same decoder shape as the HF row
    ours_mae = MAE(Vision(cfg), enc, MAEConfig(decoder=MAEDecoderConfig(dim=enc.dim, depth=2, heads=enc.heads,
                                                                        ffn_dim=enc.ffn_dim, eps=enc.eps))).train()
    coll_mae = ImageCollator(MaskConfig(kind="random", prob=0.75), cfg, clones=1)

    def batch(i: int) -> torch.Tensor:
        return torch.stack(pixels[i * args.batch:(i + 1) * args.batch])

    def examples(i: int) -> list[dict]:
        return [{"pixel_values": x, "seed": (0, 0, i * args.batch + j)} for j, x in enumerate(batch(i))]

    def loss_student(i):
        states, _ = student({"pixel_values": batch(i)})
        return student.norm(states[-1]).float().pow(2).mean()

    def loss_d2v(model, collator):
        return lambda i: model(**collator(examples(i)))["loss"]

    m = args.clones
    rows = {
        "student alone (fwd+bwd)": training_step(loss_student, student, args.batch),
        "multissl data2vec v1": training_step(loss_d2v(v1, coll_v1), v1, args.batch, ema=True),
        f"multissl data2vec 2.0 (M={m})": training_step(loss_d2v(v2, coll_v2), v2, args.batch * m, ema=True),
        "multissl mae": training_step(loss_d2v(ours_mae, coll_mae), ours_mae, args.batch),
        "HF ViTMAEForPreTraining": training_step(lambda i: mae(pixel_values=batch(i)).loss, mae, args.batch),
    }
    medians, views = run_rounds(rows, args.rounds)
    print(f"encoder {args.depth}x{args.dim}, {args.image} px, patch {args.patch}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} steps (AdamW step included)")
    report(medians, views, args.batch, f"multissl data2vec 2.0 (M={m})", 3.0, ("images/s", 1.0))


if __name__ == "__main__":
    main()
