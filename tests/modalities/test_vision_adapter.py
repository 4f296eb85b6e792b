import pytest
import torch
from PIL import Image

from multissl.core.blocks import EncoderConfig
from multissl.core.decoder import DecoderConfig
from multissl.core.encoder import Encoder
from multissl.export.hf import export
from multissl.methods.data2vec import Data2Vec, Data2VecConfig
from multissl.modalities.vision.data import eval_transform
from multissl.modalities.vision.model import Vision, VisionConfig
from multissl.probe import accuracy, probe
from multissl.recipe import load_recipe
from multissl.train import build_model, pretrain
from tests.conftest import TINY_VISION

SMALL = VisionConfig(image_size=32, patch_size=4, mask_embedding=True)
ENC = EncoderConfig(dim=32, depth=2, heads=4, ffn_dim=64, norm="pre", eps=1e-6)


def _pixels(image_dirs, cfg=SMALL):
    images = [Image.open(p).convert("RGB") for p in image_dirs[2][:3]]
    return torch.stack([eval_transform(i, cfg) for i in images])


@torch.no_grad()
def test_encoder_equals_vit_model_on_real_photos(image_dirs):
    from transformers import AutoModel

    m = Vision(SMALL)
    torch.manual_seed(0)
    enc = Encoder(m, ENC).eval()
    hf = AutoModel.from_config(m.hf_config(ENC)).eval()
    missing, unexpected = hf.load_state_dict(m.to_hf_state_dict(enc.state_dict(), ENC), strict=False)
    assert all(k.startswith("pooler.") for k in missing) and not unexpected
    x = _pixels(image_dirs)
    states, _ = enc({"pixel_values": x})
    out = hf(pixel_values=x, output_hidden_states=True)
    diffs = [float((a - b).abs().max()) for a, b in zip(states, out.hidden_states, strict=True)]
    diffs.append(float((enc.norm(states[-1]) - out.last_hidden_state).abs().max()))
    assert max(diffs) <= 1e-4


@torch.no_grad()
def test_import_from_a_vit_classifier_folder(tmp_path, image_dirs):
    from transformers import ViTForImageClassification

    m = Vision(VisionConfig(image_size=32, patch_size=4))
    torch.manual_seed(1)
    hf = ViTForImageClassification(m.hf_config(ENC)).eval()
    hf.save_pretrained(tmp_path / "cls")
    fresh = Vision(VisionConfig())
    enc_cfg, state = fresh.from_hf(str(tmp_path / "cls"))
    assert (fresh.cfg.image_size, fresh.cfg.patch_size, enc_cfg.dim, enc_cfg.norm) == (32, 4, 32, "pre")
    enc = Encoder(fresh, enc_cfg).eval()
    enc.load_state_dict(state, strict=False)
    x = _pixels(image_dirs)
    states, _ = enc({"pixel_values": x})
    theirs = hf.vit(pixel_values=x, output_hidden_states=True).hidden_states
    assert max(float((a - b).abs().max()) for a, b in zip(states, theirs, strict=True)) <= 1e-4


def test_teacher_is_the_whole_encoder_and_cls_loss_counts(image_dirs):
    torch.manual_seed(0)
    cfg = Data2VecConfig(version=2, clones=2, top_k=2, final_norm="layer", decoder=DecoderConfig(
        layers=1, kernel=3, dim=32, groups=4, residual=True, projection_layers=1, input_dropout=0.0))
    model = Data2Vec(Vision(VisionConfig(image_size=32, patch_size=4)), ENC, cfg)
    assert {"local", "context", "blocks", "norm"} <= set(model.teacher)
    x = _pixels(image_dirs)[:2]
    mask = torch.zeros(4, 64, dtype=torch.bool)
    mask[:, ::2] = True
    torch.manual_seed(3)
    plain = model({"pixel_values": x}, mask)["loss"]
    cfg.cls_loss = 0.01
    torch.manual_seed(3)
    with_cls = model({"pixel_values": x}, mask)["loss"]
    assert float(with_cls.detach()) > float(plain.detach())  # the CLS term adds a positive amount


@pytest.mark.parametrize("recipe,extra", [("recipes/vision/tiny.yaml", []),
                                          ("recipes/vision/data2vec-base.yaml", ["--clones", "1", "--length", "4"])])
def test_pretrain_export_and_classifier_fine_tuning(tmp_path, image_dirs, recipe, extra):
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

    r = load_recipe(recipe, [*TINY_VISION, *extra, "--data", str(image_dirs[0]), "--output_dir", str(tmp_path / "run"),
                             "--max_steps", "3"])
    out = export(pretrain(r), tmp_path / "out")
    assert type(AutoModel.from_pretrained(out)).__name__ == "ViTModel"
    proc = AutoImageProcessor.from_pretrained(out)
    clf = AutoModelForImageClassification.from_pretrained(out, num_labels=10).train()
    images = [Image.open(p).convert("RGB") for p in sorted(image_dirs[0].glob("*.png"))[:8]]
    batch = proc(images, return_tensors="pt")
    labels = torch.arange(8) % 10
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
    before = clf.classifier.weight.detach().clone()
    loss = clf(**batch, labels=labels).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, clf.classifier.weight)
    assert clf.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_recipes_validate_with_reference_values():
    v1 = load_recipe("recipes/vision/data2vec-base.yaml")
    assert (v1.mask.kind, v1.mask.length, v1.method.top_k, v1.method.target, v1.method.loss_beta) == (
        "beit", 16, 6, "block", 2.0)
    assert v1.method.ema.decay == v1.method.ema.end_decay == 0.9998 and v1.train.lr == 2e-3
    v2 = load_recipe("recipes/vision/data2vec2-base.yaml")
    assert (v2.method.clones, v2.mask.kind, v2.mask.prob, v2.mask.length, v2.mask.adjust) == (
        16, "inverse_block", 0.8, 3, 0.07)
    assert (v2.method.top_k, v2.method.cls_loss, v2.method.final_norm, v2.train.betas) == (10, 0.01, "layer",
                                                                                           (0.9, 0.95))


def test_init_from_vit_then_pretrain(tmp_path, image_dirs):
    from transformers import ViTModel

    hf = ViTModel(Vision(VisionConfig(image_size=16, patch_size=4)).hf_config(ENC))
    hf.save_pretrained(tmp_path / "hf")
    r = load_recipe("recipes/vision/tiny.yaml", [*TINY_VISION, "--data", str(image_dirs[0]), "--init_from",
                                                 str(tmp_path / "hf"), "--output_dir", str(tmp_path / "run")])
    _, model, *_ = build_model(r)
    torch.testing.assert_close(model.encoder.context.position_embeddings, hf.embeddings.position_embeddings)
    torch.testing.assert_close(model.teacher["context"].position_embeddings, hf.embeddings.position_embeddings)


def test_image_probe_linear_knn_and_layer_weighted(tmp_path, image_dirs):
    r = load_recipe("recipes/vision/tiny.yaml", [*TINY_VISION, "--data", str(image_dirs[0]), "--output_dir",
                                                 str(tmp_path / "run"), "--max_steps", "2"])
    out = export(pretrain(r), tmp_path / "out")
    for pool in ("mean", "cls"):
        results = probe(out, image_dirs[1], label_column="label", input_column="path", folds=3, pool=pool,
                        max_samples=300)
        majority = accuracy(results, "majority class")
        assert majority < 0.2  # ten digits
        assert accuracy(results, "pretrained") > 2 * majority  # handwritten digits separate even barely trained
        assert 0 <= accuracy(results, "pretrained", "20-NN") <= 1
