"""Seconds of audio trained per second for multissl's speech objectives against the student alone and
transformers' wav2vec 2.0 pretraining, in one run, on the same encoder shape, batch and real decoded
speech (King James verses spoken by espeak-ng, resampled to 16 kHz and cropped to equal length).

Rows: the student encoder's plain forward+backward (no teacher), multissl data2vec v1 (dense student,
span masks, teacher on the shared conv features, regression head, EMA), multissl data2vec 2.0 with M
clones (sparse student, block masks, one teacher pass per sample, the released audio decoder's shape,
EMA), and ``Wav2Vec2ForPreTraining`` (quantizer, contrastive loss with 100 negatives, diversity loss)
with the HF speech-pretraining example's masking (p 0.65, length 10). Every row includes the AdamW
step. Rounds interleave the rows so machine noise hits them alike; the median is reported.

    python tools/bench_audio.py [--dim 256 --depth 4 --conv-dim 256 --seconds 4 --batch 4 --clones 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def speech(n: int, seconds: float) -> list[np.ndarray]:
    """``n`` spoken verses at 16 kHz, normalised, each cropped to ``seconds``."""
    from multissl.modalities.audio.data import normalize, read_audio
    from tools.make_speech import verses

    with tempfile.TemporaryDirectory() as d:
        wavs = [read_audio(f) for f in verses(Path(d), 3 * n)]
    keep = [normalize(w[: int(seconds * 16000)]) for w in wavs if len(w) >= seconds * 16000][:n]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} verses last {seconds} s; lower --seconds")
    return keep


def main() -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from multissl.core.blocks import EncoderConfig
    from multissl.core.decoder import DecoderConfig
    from multissl.core.ema import EMAConfig
    from multissl.data.masking import MaskConfig
    from multissl.methods.bestrq import BestRQ, BestRQConfig
    from multissl.methods.data2vec import Data2Vec, Data2VecConfig
    from multissl.modalities.audio.data import AudioCollator
    from multissl.modalities.audio.model import Audio, AudioConfig
    from tools.step_bench import report, run_rounds, training_step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--conv-dim", type=int, default=256)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clones", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    wavs = speech(args.batch * (args.rounds + 2), args.seconds)
    audio = AudioConfig(conv_dim=(args.conv_dim,) * 7, pos_conv_groups=16)
    enc = EncoderConfig(dim=args.dim, depth=args.depth, heads=args.heads, ffn_dim=4 * args.dim)
    decoder = DecoderConfig(layers=4, kernel=7, dim=args.dim // 2, groups=16, residual=True, projection_layers=1)
    ema = EMAConfig(0.999, 0.9999, 1000)

    def d2v(version: int, clones: int):
        torch.manual_seed(0)
        cfg = AudioConfig(**{**audio.__dict__, "mask_embedding": version == 1})
        method = Data2VecConfig(version=version, clones=clones, top_k=args.depth, decoder=decoder, ema=ema)
        return Data2Vec(Audio(cfg), enc, method).train()

    v1, v2 = d2v(1, 1), d2v(2, args.clones)
    student = d2v(1, 1).encoder
    coll_v1 = AudioCollator(MaskConfig(kind="span", prob=0.65, length=10), audio, clones=1)
    coll_v2 = AudioCollator(MaskConfig(kind="block", prob=0.5, length=5, adjust=0.05), audio, clones=args.clones)
    torch.manual_seed(0)  # the paper's quantiser: one codebook of 8192 16-dim codes
    bestrq = BestRQ(Audio(AudioConfig(**{**audio.__dict__, "mask_embedding": True})), enc, BestRQConfig()).train()
    torch.manual_seed(0)
    w2v = Wav2Vec2ForPreTraining(Wav2Vec2Config(
        hidden_size=args.dim, num_hidden_layers=args.depth, num_attention_heads=args.heads,
        intermediate_size=4 * args.dim, conv_dim=(args.conv_dim,) * 7, feat_extract_norm="layer",
        conv_bias=False, do_stable_layer_norm=False, mask_time_prob=0.65, mask_time_length=10,
        feat_quantizer_dropout=0.0, layerdrop=0.0)).train()

    def examples(i: int) -> list[dict]:
        return [{"input_values": w, "seed": (0, 0, i * args.batch + j)}
                for j, w in enumerate(wavs[i * args.batch:(i + 1) * args.batch])]

    def batch_values(i: int) -> torch.Tensor:
        return torch.from_numpy(np.stack(wavs[i * args.batch:(i + 1) * args.batch]))

    def loss_student(i):
        states, _ = student({"input_values": batch_values(i)})
        return states[-1].float().pow(2).mean()

    def loss_d2v(model, collator):
        return lambda i: model(**collator(examples(i)))["loss"]

    def loss_w2v(i):
        x = batch_values(i)
        t = int(w2v._get_feat_extract_output_lengths(x.shape[1]))
        mask = _compute_mask_indices((x.shape[0], t), mask_prob=0.65, mask_length=10, min_masks=2)
        neg = _sample_negative_indices((x.shape[0], t), w2v.config.num_negatives, mask_time_indices=mask)
        return w2v(x, mask_time_indices=torch.from_numpy(mask), sampled_negative_indices=torch.from_numpy(neg)).loss

    m = args.clones
    rows = {
        "student alone (fwd+bwd)": training_step(loss_student, student, args.batch),
        "multissl data2vec v1": training_step(loss_d2v(v1, coll_v1), v1, args.batch, ema=True),
        f"multissl data2vec 2.0 (M={m})": training_step(loss_d2v(v2, coll_v2), v2, args.batch * m, ema=True),
        "multissl bestrq": training_step(loss_d2v(bestrq, coll_v1), bestrq, args.batch),
        "HF Wav2Vec2ForPreTraining": training_step(loss_w2v, w2v, args.batch),
    }
    medians, views = run_rounds(rows, args.rounds)
    print(f"encoder {args.depth}x{args.dim}, conv {args.conv_dim}x7, {args.seconds:g} s utterances, batch "
          f"{args.batch}, {torch.get_num_threads()} threads, median of {args.rounds} steps (AdamW step included)")
    report(medians, views, args.batch, f"multissl data2vec 2.0 (M={m})", 2.0, ("audio s/s", args.seconds))


if __name__ == "__main__":
    main()
