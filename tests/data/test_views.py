"""Augmented views on the data side (images: multi-crop with the BYOL / DINO augmentations; speech:
crops, gain and mixing), checked on real photos and real speech against definitions written here."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from multissl.data.masking import MaskConfig
from multissl.data.views import ViewCollator
from multissl.modalities.audio.data import read_audio
from multissl.modalities.audio.model import AudioConfig
from multissl.modalities.audio.views import AudioViews, SpeechViews
from multissl.modalities.vision.data import eval_transform
from multissl.modalities.vision.model import VisionConfig
from multissl.modalities.vision.views import ImageViews, VisionViews

CFG = VisionConfig(image_size=32, patch_size=4)
# every augmentation off: a view is a crop, resized
PLAIN = VisionViews(flip=0.0, jitter=0.0, grayscale=0.0, blur=(0.0,), local_blur=0.0, solarize=(0.0,))
AUDIO = AudioConfig(conv_dim=(32,) * 7)


@pytest.fixture(scope="module")
def photos(image_dirs) -> list[Image.Image]:
    """Colour photos: the astronaut, coffee, the cat, and a greyscale one (the camera man)."""
    by_name = {p.stem: p for p in image_dirs[2]}
    return [Image.open(by_name[n]).convert("RGB") for n in ("astronaut", "coffee", "chelsea", "camera")]


@pytest.fixture(scope="module")
def clips(speech_dir) -> list[np.ndarray]:
    """Spoken verses at 16 kHz, as decoded (not normalised)."""
    return [read_audio(p, 16000) for p in sorted(speech_dir.glob("*.wav"))[:4]]


def _examples(key, items, first_index=0):
    return [{key: x, "seed": (1, 0, first_index + i)} for i, x in enumerate(items)]


def _pixels(view: torch.Tensor, cfg: VisionConfig = CFG) -> np.ndarray:
    """A normalised view (B, 3, H, W) back in [0, 1] pixels."""
    mean, std = np.asarray(cfg.mean).reshape(1, 3, 1, 1), np.asarray(cfg.std).reshape(1, 3, 1, 1)
    return view.double().numpy() * std + mean


# --- images ----------------------------------------------------------------------------------------

def test_image_views_count_sizes_and_order(photos):
    views = VisionViews(global_crops=2, local_crops=3)
    batch = ViewCollator(ImageViews(views, CFG))(_examples("image", photos))
    shapes = [tuple(v["pixel_values"].shape) for v in batch["views"]]
    # global views first at image_size; local ones at 3/7 of it, rounded down to the patch: 32 * 3 / 7 -> 12
    assert shapes == [(4, 3, 32, 32)] * 2 + [(4, 3, 12, 12)] * 3
    assert "view_masks" not in batch
    sized = ImageViews(replace(views, global_size=24, local_size=8), CFG)
    sized = sized([{"image": photos[0]}], [np.random.default_rng(0)])
    assert [v["pixel_values"].shape[-1] for v in sized] == [24, 24, 8, 8, 8]
    with pytest.raises(ValueError, match=r"views.local_size \(10\) must be a multiple of adapter.patch_size \(4\)"):
        ImageViews(replace(views, local_size=10), CFG)


def test_an_image_views_depend_on_its_seed_only(photos):
    """The same example in another batch, at another place, gets the same views and view masks."""
    collate = ViewCollator(ImageViews(VisionViews(local_crops=2), CFG), MaskConfig(kind="block", prob=0.5, length=2))
    whole = collate(_examples("image", photos))
    alone = collate(_examples("image", photos[2:3], first_index=2))
    other = collate([_examples("image", photos)[3], _examples("image", photos)[2]])
    for v, view in enumerate(whole["views"]):
        assert torch.equal(view["pixel_values"][2], alone["views"][v]["pixel_values"][0])
        assert torch.equal(view["pixel_values"][2], other["views"][v]["pixel_values"][1])
    for v, mask in enumerate(whole["view_masks"]):
        assert torch.equal(mask[2], alone["view_masks"][v][0]) and torch.equal(mask[2], other["view_masks"][v][1])
    # ... and another seed (the next epoch) gets other views
    again = collate([{"image": photos[2], "seed": (1, 1, 2)}])
    assert not torch.equal(again["views"][0]["pixel_values"][0], alone["views"][0]["pixel_values"][0])
    # the two global views of an example differ from each other
    assert not torch.equal(whole["views"][0]["pixel_values"], whole["views"][1]["pixel_values"])


def test_a_whole_image_crop_without_augmentation_is_the_evaluation_transform(photos):
    square = [p.resize((96, 96)) for p in photos]
    maker = ImageViews(replace(PLAIN, global_scale=(1.0, 1.0)), CFG)
    views = maker(_examples("image", square), [np.random.default_rng(i) for i in range(4)])
    for view in views:
        for i, img in enumerate(square):
            assert torch.allclose(view["pixel_values"][i], eval_transform(img, CFG), atol=1e-5)


def _pair(photos, **changes):
    """(plain views, views with ``changes``) of the photos, drawn from the same seeds."""
    seeds = _examples("image", photos)
    plain = ViewCollator(ImageViews(PLAIN, CFG))(seeds)["views"]
    changed = ViewCollator(ImageViews(replace(PLAIN, **changes), CFG))(seeds)["views"]
    return [_pixels(v["pixel_values"]) for v in plain], [_pixels(v["pixel_values"]) for v in changed]


def test_flip_mirrors_the_crop(photos):
    plain, flipped = _pair(photos, flip=1.0)
    for a, b in zip(plain, flipped, strict=True):
        np.testing.assert_allclose(b, a[..., ::-1], atol=1e-5)


def test_solarize_inverts_the_pixels_at_or_above_the_threshold(photos):
    plain, solarized = _pair(photos, solarize=(1.0, 1.0), solarize_threshold=0.6)
    for a, b in zip(plain, solarized, strict=True):
        a32 = a.astype(np.float32)
        np.testing.assert_allclose(b, np.where(a32 >= 0.6, 1 - a32, a32), atol=1e-5)
        assert (a > 0.65).any()  # the check saw inverted pixels


def test_grayscale_gives_the_luma_in_every_channel(photos):
    plain, grey = _pair(photos, grayscale=1.0)
    for a, b in zip(plain, grey, strict=True):
        luma = 0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2]  # ITU-R 601, as torchvision and PIL
        for c in range(3):
            np.testing.assert_allclose(b[:, c], luma, atol=1e-5)


def test_blur_is_a_gaussian_filter_of_the_drawn_width(photos):
    from scipy.ndimage import gaussian_filter

    plain, blurred = _pair(photos, blur=(1.0,), blur_sigma=(1.5, 1.5))
    for a, b in zip(plain, blurred, strict=True):
        # 2 * ceil(3 * 1.5) + 1 = 11 taps, mirrored at the borders without repeating the edge
        ref = gaussian_filter(a, sigma=(0, 0, 1.5, 1.5), mode="mirror", truncate=5 / 1.5)
        np.testing.assert_allclose(b, ref, atol=1e-5)


def test_brightness_scales_and_contrast_blends_with_the_mean_grey(photos):
    plain, bright = _pair(photos, jitter=1.0, contrast=0.0, saturation=0.0, hue=0.0)
    factors = set()
    for a, b in zip(plain, bright, strict=True):
        for i in range(len(a)):
            inside = (a[i] > 0.05) & (b[i] < 0.99)  # not clipped at white
            ratio = b[i][inside] / a[i][inside]
            assert ratio.std() < 1e-4 and 0.6 - 1e-4 <= ratio.mean() <= 1.4 + 1e-4  # one factor in [0.6, 1.4]
            factors.add(round(float(ratio.mean()), 3))
    assert len(factors) > 4  # drawn per example and view
    plain, contrasted = _pair(photos, jitter=1.0, brightness=0.0, saturation=0.0, hue=0.0)
    for a, b in zip(plain, contrasted, strict=True):
        for i in range(len(a)):
            mean_grey = (0.299 * a[i, 0] + 0.587 * a[i, 1] + 0.114 * a[i, 2]).mean()
            inside = (b[i] > 1e-3) & (b[i] < 1 - 1e-3)
            f = np.polyfit(a[i][inside], b[i][inside], 1)  # b = f a + (1 - f) mean_grey
            assert 0.6 - 1e-3 <= f[0] <= 1.4 + 1e-3
            assert abs(f[1] - (1 - f[0]) * mean_grey) < 1e-3


def test_saturation_and_hue_keep_the_grey_of_a_grey_image(photos):
    grey = photos[3]  # the camera man: R = G = B
    plain, jittered = _pair([grey] * 4, jitter=1.0, brightness=0.0, contrast=0.0)
    for a, b in zip(plain, jittered, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)
    plain, jittered = _pair(photos[:3], jitter=1.0, brightness=0.0, contrast=0.0)
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain, jittered, strict=True)) > 0.05  # colours move


def test_per_view_probabilities_follow_byol(photos):
    """BYOL's asymmetric pair: view 1 always blurred and never solarised, view 2 rarely blurred and
    sometimes solarised (defaults 1.0 / 0.1 and 0.0 / 0.2); each draw is per example."""
    maker = ImageViews(VisionViews(), CFG)
    picks = {"blur": [[], []], "solarize": [[], []]}
    rng = np.random.default_rng(0)
    for _ in range(2000):
        for v, kind in enumerate(maker.kinds):
            p = maker._colour_params(kind, rng)
            picks["blur"][v].append(p["blur"])
            picks["solarize"][v].append(p["solarize"])
    assert np.mean(picks["blur"][0]) == 1.0 and abs(np.mean(picks["blur"][1]) - 0.1) < 0.03
    assert np.mean(picks["solarize"][0]) == 0.0 and abs(np.mean(picks["solarize"][1]) - 0.2) < 0.03


def test_view_masks_follow_the_mask_config(photos):
    """Each global view of an example gets its own mask of the view's patch grid, drawn from the
    example's mask stream (3) in view order; local views get none."""
    from multissl.data.masking import sample_mask
    from multissl.data.seeds import example_rng

    for mask in (MaskConfig(kind="random", prob=0.5), MaskConfig(kind="block", prob=0.6, length=3, adjust=0.1)):
        collate = ViewCollator(ImageViews(VisionViews(global_crops=3, local_crops=2), CFG), mask)
        examples = _examples("image", photos)
        batch = collate(examples)
        assert len(batch["view_masks"]) == 3
        for i, e in enumerate(examples):
            rng = example_rng((*e["seed"], 3))
            for m in batch["view_masks"]:
                assert m.shape == (4, 64) and m.dtype == torch.bool
                assert np.array_equal(m[i].numpy(), sample_mask(mask, (8, 8), rng).reshape(-1))
                assert int(m[i].sum()) == int(64 * mask.prob)  # both kinds mask an exact share
        assert not torch.equal(batch["view_masks"][0], batch["view_masks"][1])


# --- speech ----------------------------------------------------------------------------------------

def test_speech_crops_have_the_requested_length_and_short_clips_are_padded(clips):
    short = clips[0][:5000]
    views = SpeechViews(AudioViews(crops=3, crop_samples=8000, mix=0.0), AUDIO)(
        _examples("input_values", [clips[1], short]), [np.random.default_rng(i) for i in range(2)])
    assert len(views) == 3
    for v in views:
        assert v["input_values"].shape == (2, 8000) and v["attention_mask"].sum(1).tolist() == [8000, 5000]
        assert float(v["input_values"][1, 5000:].abs().max()) == 0.0
        real = v["input_values"][1, :5000].double()
        assert abs(float(real.mean())) < 1e-5 and abs(float(real.std(unbiased=False)) - 1) < 1e-3  # normalised
    with pytest.raises(ValueError, match=r"views.crop_samples \(20000\) is longer than adapter.max_samples"):
        SpeechViews(AudioViews(crop_samples=20000), replace(AUDIO, max_samples=16000))
    with pytest.raises(ValueError, match=r"views.crop_samples \(300\) is shorter than the conv receptive field"):
        SpeechViews(AudioViews(crop_samples=300), AUDIO)


def test_speech_crops_are_pieces_of_the_clip_and_gain_scales(clips):
    raw = replace(AUDIO, normalize=False)
    clip = clips[1]
    views = SpeechViews(AudioViews(crops=4, crop_samples=8000, gain_db=0.0, mix=0.0), raw)(
        [{"input_values": clip}], [np.random.default_rng(0)])
    starts = set()
    for v in views:
        piece = v["input_values"][0].numpy()
        candidates = np.flatnonzero(clip == piece[0])
        start = next(s for s in candidates if np.array_equal(clip[s:s + 8000], piece))
        starts.add(int(start))
    assert len(starts) == 4  # four crops from four places
    short = clip[:6000]  # a clip shorter than the crop is not cropped: its gain is all that changes
    views = SpeechViews(AudioViews(crops=4, crop_samples=8000, gain_db=6.0, mix=0.0), raw)(
        [{"input_values": short}], [np.random.default_rng(1)])
    gains = []
    for v in views:
        scaled = v["input_values"][0, :6000].numpy()
        g = float(np.dot(scaled, short) / np.dot(short, short))
        np.testing.assert_allclose(scaled, g * short, rtol=1e-5, atol=1e-7)
        assert abs(20 * np.log10(g)) <= 6.0 + 1e-6
        gains.append(g)
    assert len({round(g, 4) for g in gains}) == 4


def test_speech_mixing_blends_in_another_clip_of_the_batch(clips):
    raw = replace(AUDIO, normalize=False)
    short = [c[:6000] for c in clips[:3]]
    views = SpeechViews(AudioViews(crops=2, crop_samples=6000, gain_db=0.0, mix=0.4), raw)(
        _examples("input_values", short), [np.random.default_rng(i) for i in range(3)])
    for v in views:
        for i, own in enumerate(short):
            x = v["input_values"][i].double().numpy()
            fits = []
            for j in range(3):  # which other clip, and in what share: least squares x = (1 - r) own + r other
                if j == i:
                    continue
                d = short[j].astype(np.float64) - own
                r = float(np.dot(x - own, d) / np.dot(d, d))
                fits.append((np.abs(x - (own + r * d)).max(), r))
            residual, r = min(fits)
            assert residual < 1e-5 and 0 <= r <= 0.4 + 1e-6


def test_speech_views_depend_on_the_seed_only_without_mixing(clips):
    collate = ViewCollator(SpeechViews(AudioViews(crop_samples=8000, mix=0.0), AUDIO), MaskConfig(kind="block",
                                                                                                    prob=0.5, length=3))
    examples = _examples("input_values", [clips[0], clips[1][:5000], clips[2]])
    whole, alone = collate(examples), collate(examples[1:2])
    for v, view in enumerate(whole["views"]):
        for key in ("input_values", "attention_mask"):
            assert torch.equal(view[key][1], alone["views"][v][key][0])
        mask = whole["view_masks"][v]
        assert torch.equal(mask[1], alone["view_masks"][v][0])
        frames = AUDIO.frames(5000)
        assert mask.shape[1] == AUDIO.frames(8000) and not mask[1, frames:].any()  # no mask on padding
        assert int(mask[1].sum()) == int(0.5 * frames)


# --- the picture ------------------------------------------------------------------------------------

def test_save_views_picture_for_images_and_speech(photos, clips, tmp_path):
    from multissl.data.views import save_views_picture

    maker = ImageViews(VisionViews(local_crops=2), CFG)
    png = save_views_picture(maker, ViewCollator(maker)(_examples("image", photos)), tmp_path / "img.png", n=3)
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > img.size[1]  # 3 rows, 4 columns
    speech = SpeechViews(AudioViews(crop_samples=16000), AUDIO)
    png = save_views_picture(speech, ViewCollator(speech)(_examples("input_values", clips)), tmp_path / "s.png")
    assert Image.open(png).format == "PNG"
    mel = speech.picture(ViewCollator(speech)(_examples("input_values", clips[:1]))["views"][0], 0)
    assert mel.shape == (80, 98)  # 80 bands, 25 ms windows every 10 ms over one second


# --- through the adapters ---------------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
@pytest.mark.parametrize("modality", ["vision", "audio"])
def test_prepare_makes_views_of_decoded_examples_loaded_or_streamed(modality, streaming, image_dirs, speech_dir):
    """In views mode a dataset yields the decoded image (or the clip as decoded, not normalised) and the
    collator makes the views; without views nothing changes."""
    from multissl.core.adapter import StudentView
    from multissl.data.config import DataConfig
    from multissl.modalities.audio.model import Audio
    from multissl.modalities.vision.model import Vision

    if modality == "vision":
        adapter, path, views = Vision(VisionConfig(image_size=16, patch_size=4)), image_dirs[2][0].parent, \
            VisionViews(local_crops=2, local_size=8)
        shapes, masks = [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2, [(3, 16)] * 2
    else:
        adapter, path, views = Audio(AUDIO), speech_dir, AudioViews(crops=3, crop_samples=8000)
        shapes, masks = [(3, 8000)] * 3, [(3, AUDIO.frames(8000))] * 3
    data = DataConfig(path=str(path), streaming=streaming, shuffle_buffer=0)
    mask = MaskConfig(kind="random", prob=0.5)
    dataset, collate, _ = adapter.prepare(data, mask, 0, StudentView(dense=False, views=True, view_masks=True), views)
    examples = [dataset[i] for i in range(3)] if not streaming else list(itertools.islice(iter(dataset), 3))
    if modality == "vision":
        assert all(isinstance(e["image"], Image.Image) for e in examples)
    else:  # not normalised: the views normalise after their gain and mixing
        assert all(abs(float(np.std(e["input_values"])) - 1) > 0.05 for e in examples)
    batch = collate(examples)
    assert [tuple(next(iter(v.values())).shape) for v in batch["views"]] == shapes
    assert [tuple(m.shape) for m in batch["view_masks"]] == masks
    plain, plain_collate, _ = adapter.prepare(data, mask, 0, StudentView(dense=False))
    first = plain[0] if not streaming else next(iter(plain))
    assert "inputs" in plain_collate([first])
