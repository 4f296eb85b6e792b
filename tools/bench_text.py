"""Step time of multissl's text objectives against the student alone and the HF masked-LM peer, in one
run, on the same encoder shape, batch and real text (the shipped King James Bible).

Rows: the student encoder's plain forward+backward (no teacher), multissl data2vec v1 (dense student,
teacher pass, regression head, EMA), multissl data2vec 2.0 with M clones (sparse student, one teacher
pass per sample, a light grouped conv decoder, EMA), the same with the released text decoder (ungrouped, as
heavy as the encoder at this width), and transformers' RobertaForMaskedLM fed by
DataCollatorForLanguageModeling. Every row includes the AdamW step. Rounds interleave the rows so that
machine noise hits them alike; the median is reported.

    python tools/bench_text.py [--dim 256 --depth 4 --seq 512 --batch 4 --clones 8 --rounds 8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus_blocks(tok, n_blocks: int, seq: int) -> torch.Tensor:
    with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    flat: list[int] = []
    for ids in tok(texts[:20000], add_special_tokens=False)["input_ids"]:
        flat += ids + [tok.sep_token_id]
        if len(flat) > n_blocks * seq:
            break
    blocks = [[tok.cls_token_id] + flat[i * (seq - 1):(i + 1) * (seq - 1)] for i in range(n_blocks)]
    return torch.tensor(blocks)


def main() -> None:
    from transformers import DataCollatorForLanguageModeling, RobertaConfig, RobertaForMaskedLM

    from multissl.core.adapter import StudentView
    from multissl.core.blocks import EncoderConfig
    from multissl.core.decoder import DecoderConfig
    from multissl.core.ema import EMAConfig
    from multissl.data.masking import MaskConfig
    from multissl.methods.data2vec import Data2Vec, Data2VecConfig
    from multissl.methods.mlm import MaskedLM, MLMConfig
    from multissl.modalities import get_modality
    from multissl.modalities.text.data import TextCollator
    from multissl.modalities.text.model import TextConfig
    from multissl.tokenizer import train_tokenizer
    from tools.step_bench import report, run_rounds, training_step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clones", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as d:
        with gzip.open(ROOT / "data" / "kjv.jsonl.gz", "rt") as fh, open(f"{d}/kjv.txt", "w") as out:
            for line in fh:
                out.write(json.loads(line)["text"] + "\n")
        tok = train_tokenizer([f"{d}/kjv.txt"], f"{d}/tok", vocab_size=args.vocab)
    blocks = corpus_blocks(tok, args.batch * (args.rounds + 3), args.seq)
    text_cfg = TextConfig(max_length=args.seq, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                          mask_token_id=tok.mask_token_id)
    enc = EncoderConfig(dim=args.dim, depth=args.depth, heads=args.heads, ffn_dim=4 * args.dim)
    # The released text decoder (5 x k9 convs, groups 1, full width) costs about as much per token as a
    # 4-layer encoder of this width; the light one has the released audio decoder's shape (4 x k7 convs
    # at half width, groups 16, residual, one projection).
    light = DecoderConfig(layers=4, kernel=7, dim=args.dim // 2, groups=16, residual=True, projection_layers=1)
    released = DecoderConfig(layers=5, kernel=9, dim=args.dim, groups=1, projection_layers=2)
    ema = EMAConfig(0.999, 0.9999, 1000)

    def d2v(version: int, clones: int, dec: DecoderConfig = light):
        torch.manual_seed(0)
        modality = get_modality("text")(text_cfg)
        cfg = Data2VecConfig(version=version, clones=clones, top_k=args.depth, decoder=dec, ema=ema,
                             head_layers=2, loss_scale=1.0,
                             target_norm="layer" if version == 1 else "instance")
        return Data2Vec(modality, enc, cfg).train()

    v1, v2, v2_released = d2v(1, 1), d2v(2, args.clones), d2v(2, args.clones, released)
    student = d2v(1, 1).encoder
    coll_v1 = TextCollator(MaskConfig(kind="bert", prob=0.15), text_cfg, StudentView(dense=True))
    coll_v2 = TextCollator(MaskConfig(kind="random", prob=0.48), text_cfg, StudentView(dense=False, clones=args.clones))
    torch.manual_seed(0)
    ours_mlm = MaskedLM(get_modality("text")(text_cfg), enc, MLMConfig()).train()
    coll_mlm = TextCollator(MaskConfig(kind="bert", prob=0.15), text_cfg, MaskedLM.student_view(MLMConfig()))
    torch.manual_seed(0)
    mlm = RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tok), hidden_size=args.dim, num_hidden_layers=args.depth, num_attention_heads=args.heads,
        intermediate_size=4 * args.dim, max_position_embeddings=text_cfg.position_rows, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, layer_norm_eps=1e-5)).train()
    mlm_collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)

    def examples(i: int) -> list[dict]:
        rows = blocks[i * args.batch:(i + 1) * args.batch]
        return [{"input_ids": r.tolist(), "seed": (0, 0, i * args.batch + j)} for j, r in enumerate(rows)]

    def loss_student(i):
        states, _ = student({"input_ids": blocks[i * args.batch:(i + 1) * args.batch]})
        return states[-1].float().pow(2).mean()

    def loss_d2v(model, collator):
        return lambda i: model(**collator(examples(i)))["loss"]

    def loss_mlm(i):
        rows = blocks[i * args.batch:(i + 1) * args.batch].tolist()
        return mlm(**mlm_collator([{"input_ids": r} for r in rows])).loss

    m = args.clones
    rows = {
        "student alone (fwd+bwd)": training_step(loss_student, student, args.batch),
        "multissl data2vec v1": training_step(loss_d2v(v1, coll_v1), v1, args.batch, ema=True),
        f"multissl data2vec 2.0 (M={m})": training_step(loss_d2v(v2, coll_v2), v2, args.batch * m, ema=True),
        "  same, released text decoder (groups 1)": training_step(loss_d2v(v2_released, coll_v2), v2_released,
                                                                  args.batch * m, ema=True),
        "multissl mlm": training_step(loss_d2v(ours_mlm, coll_mlm), ours_mlm, args.batch),
        "HF RobertaForMaskedLM + MLM collator": training_step(loss_mlm, mlm, args.batch),
    }
    medians, views = run_rounds(rows, args.rounds)
    print(f"encoder {args.depth}x{args.dim}, {args.seq} tokens, batch {args.batch}, vocab {len(tok)}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} steps (AdamW step included)")
    report(medians, views, args.batch, f"multissl data2vec 2.0 (M={m})", 2.0)


if __name__ == "__main__":
    main()
