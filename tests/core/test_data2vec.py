import pytest
import torch

from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import DecoderConfig
from multissl.core.encoder import gather_kept, scatter_kept
from multissl.methods.data2vec import Data2Vec, Data2VecConfig
from multissl.modalities import get_modality
from multissl.modalities.text.model import TextConfig

ENC = EncoderConfig(dim=32, depth=3, heads=4, ffn_dim=64)


def make(version=2, clones=1, mask_with="token", seed=0):
    torch.manual_seed(seed)
    text = get_modality("text")(TextConfig(max_length=16, vocab_size=60, pad_token_id=1, bos_token_id=0,
                                            eos_token_id=2, mask_token_id=3, mask_with=mask_with))
    cfg = Data2VecConfig(version=version, clones=clones, top_k=2,
                         decoder=DecoderConfig(layers=2, dim=32, kernel=3))
    return Data2Vec(text, ENC, cfg)


def batch(b=3, t=16):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 60, (b, t), generator=g)
    ids[0, -4:] = 1  # padding
    return ids


def student_outputs(model, ids, mask, sparse):
    enc = model.encoder
    feats, pad = enc.local({"input_ids": ids})
    x = enc.context(feats, pad, mask)
    if sparse:
        x, xpad, keep = gather_kept(x, pad, mask, 0)
        x, _, _ = enc.blocks(x, xpad)
        return scatter_kept(x, xpad, keep, 0.0)
    x, _, _ = enc.blocks(x, pad)
    return x


def test_sparse_equals_dense_at_mask_ratio_zero():
    model = make().eval()
    ids = batch()
    no_mask = torch.zeros(ids.shape, dtype=torch.bool)
    dense = student_outputs(model, ids, no_mask, sparse=False)
    sparse = student_outputs(model, ids, no_mask, sparse=True)
    valid = ids != 1
    assert torch.allclose(dense[valid], sparse[valid], atol=1e-5)


def test_sparse_student_sees_only_unmasked_tokens():
    model = make().eval()
    ids = batch()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, 3:8] = True
    out = student_outputs(model, ids, mask, sparse=True)
    ids2 = ids.clone()
    ids2[:, 3:8] = 7  # change only masked tokens
    out2 = student_outputs(model, ids2, mask, sparse=True)
    keep = ~mask & (ids != 1)
    assert torch.allclose(out[keep], out2[keep], atol=1e-5)


@pytest.mark.parametrize("version,clones", [(1, 1), (2, 1), (2, 4)])
def test_forward_backward_and_teacher_runs_once_per_sample(version, clones):
    model = make(version, clones).train()
    ids = batch()
    mask = torch.rand(ids.shape[0] * clones, ids.shape[1], generator=torch.Generator().manual_seed(0)) < 0.5
    seen = []
    model.teacher["blocks"][0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = model({"input_ids": ids}, mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert seen == [ids.shape[0]]  # the teacher ran once, on B samples, whatever M is
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.encoder.blocks[0].fc1.weight.grad is not None


def test_teacher_gets_the_unmasked_input():
    model = make(version=1).eval()
    ids = batch()
    student = ids.clone()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, 4:9] = True
    student[mask] = 3  # <mask>
    targets = []
    orig = model._teacher
    model._teacher = lambda inputs, local_out=None: targets.append(inputs["input_ids"]) or orig(inputs, local_out)
    model({"input_ids": ids}, mask, student_inputs={"input_ids": student})
    assert torch.equal(targets[0], ids)


def test_loss_uses_masked_positions_only():
    model = make(version=1).eval()
    ids = batch()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, 5] = True
    y, pad, pooled = model._teacher({"input_ids": ids})

    def fake_targets(inputs, local_out=None):
        t = y.clone()
        t[:, :5] = 1000.0  # garbage at unmasked positions must not matter
        return t, pad, pooled

    base = model({"input_ids": ids}, mask)["loss"]
    model._teacher = fake_targets
    assert torch.allclose(model({"input_ids": ids}, mask)["loss"], base)


def test_v1_learned_mask_embedding_replaces_masked_tokens():
    model = make(version=1, mask_with="embedding").eval()
    assert model.encoder.local.mask_embedding is not None
    ids = batch()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[:, 2] = True
    out = model({"input_ids": ids}, mask)
    out["loss"].backward()
    assert model.encoder.local.mask_embedding.grad.abs().sum() > 0


def test_ema_step_and_teacher_encoder():
    model = make()
    assert set(model.teacher.keys()) == {"blocks", "norm"}  # text shares embeddings with the teacher
    with torch.no_grad():
        for p in model.encoder.blocks.parameters():
            p.add_(1.0)
    model.cfg.ema.decay = 0.0
    assert model.ema_step() == 0.0
    assert int(model.ema_updates) == 1
    t = model.teacher_encoder()
    for a, b in zip(t.blocks.parameters(), model.encoder.blocks.parameters(), strict=True):
        assert torch.equal(a, b)


def test_teacher_runs_without_dropout_while_the_student_trains():
    model = make().train()
    ids = batch()
    a, b = model.targets({"input_ids": ids}), model.targets({"input_ids": ids})
    assert torch.equal(a, b)  # no dropout in the teacher pass
    assert model.encoder.context.training and not model.teacher.training  # shared parts back in train mode
