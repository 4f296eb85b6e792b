import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from multissl.data.masking import MaskConfig
from multissl.modalities.audio.data import (
    AudioCollator,
    AudioDataset,
    BadAudioError,
    build_audio_dataset,
    find_audio,
    normalize,
    read_audio,
    scan,
    scan_report,
)
from multissl.modalities.audio.model import AudioConfig
from multissl.recipe import DataConfig, RecipeError
from tests.conftest import first_pass

CFG = AudioConfig(max_samples=16000)


@pytest.fixture(scope="module")
def verse(speech_dir) -> np.ndarray:
    """One spoken verse at its native 22.05 kHz."""
    wav, sr = sf.read(sorted(speech_dir.glob("*.wav"))[0], dtype="float32")
    assert sr == 22050
    return wav


def test_resampling_and_downmix_of_real_speech(tmp_path, verse):
    for rate in (8000, 22050, 44100, 48000):
        import soxr

        x = soxr.resample(verse, 22050, rate).astype(np.float32)
        sf.write(tmp_path / f"r{rate}.wav", x, rate)
        out = read_audio(tmp_path / f"r{rate}.wav", 16000)
        assert abs(len(out) - len(verse) * 16000 / 22050) <= 2, rate
    sf.write(tmp_path / "stereo.flac", np.stack([verse, 0.5 * verse], 1), 22050)
    stereo = read_audio(tmp_path / "stereo.flac", 22050)
    np.testing.assert_allclose(stereo, 0.75 * verse, atol=1e-4)  # 16-bit flac quantisation


@pytest.mark.parametrize("fmt,subtype,tol", [("wav", "PCM_16", 1e-4), ("flac", "PCM_24", 1e-6),
                                             ("ogg", "VORBIS", None), ("mp3", "MPEG_LAYER_III", None),
                                             ("ogg", "OPUS", None)])
def test_formats_decode_to_the_same_speech(tmp_path, verse, fmt, subtype, tol):
    x = read_audio(_write(tmp_path, verse, fmt, subtype, 48000 if subtype == "OPUS" else 22050), 16000)
    ref = read_audio(_write(tmp_path, verse, "wav", "FLOAT", 22050, "ref"), 16000)
    if tol is not None:
        np.testing.assert_allclose(x, ref, atol=tol)
    else:  # lossy codecs: same length (codec padding aside) and the same waveform shape
        n = min(len(x), len(ref))
        assert abs(len(x) - len(ref)) < 0.05 * len(ref)
        lag = int(np.argmax(np.correlate(x[:n][:8000], ref[:n][:8000], "full"))) - 7999
        a, b = (x[lag:n], ref[:n - lag]) if lag >= 0 else (x[:n + lag], ref[-lag:n])
        assert np.corrcoef(a, b)[0, 1] > 0.8


def _write(tmp_path, wav, fmt, subtype, rate, stem="x"):
    import soxr

    data = wav if rate == 22050 else soxr.resample(wav, 22050, rate).astype(np.float32)
    path = tmp_path / f"{stem}-{subtype}.{fmt}"
    sf.write(path, data, rate, subtype=subtype, format="OGG" if fmt == "ogg" else None)
    return path


def test_normalize_silence_and_speech(verse):
    assert not np.isnan(normalize(np.zeros(1000, np.float32))).any()
    assert np.abs(normalize(np.zeros(1000, np.float32))).max() == 0
    z = normalize(verse)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-3


def test_find_audio_in_folders_manifests_and_datasets(tmp_path, speech_dir):
    files = sorted(speech_dir.glob("*.wav"))
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "one.wav").write_bytes(files[0].read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    assert [c.name for c in find_audio(str(tmp_path / "a"))] == [str(nested / "one.wav")]

    fair = tmp_path / "train.tsv"  # fairseq: root folder, then relative path and length in samples
    fair.write_text(f"{speech_dir}\n{files[0].name}\t12345\n{files[1].name}\t23456\n")
    clips = find_audio(str(fair))
    assert [c.frames for c in clips] == [12345, 23456] and clips[0].name == str(files[0])

    csv = tmp_path / "m.csv"
    csv.write_text(f"path,duration\n{files[2]},1.5\n{files[3]},\n")
    clips = find_audio(str(csv))
    assert clips[0].frames == 24000 and clips[1].frames == -1

    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps({"audio": str(f)}) for f in files[:3]))
    assert len(find_audio(f"{jl},{fair}")) == 5

    import datasets

    ds = datasets.Dataset.from_dict({"audio": [str(f) for f in files[:4]], "id": [0, 1, 2, 3]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds = ds.map(lambda r: {"audio": {"bytes": open(r["audio"]["path"], "rb").read(), "path": None}})
    ds.save_to_disk(tmp_path / "hf")
    clips = find_audio(str(tmp_path / "hf"))
    assert len(clips) == 4 and clips[0].data is not None
    np.testing.assert_array_equal(read_audio(clips[1].source()), read_audio(files[1]))

    with pytest.raises(RecipeError, match="no such file"):
        find_audio(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="no audio files"):
        find_audio(str(tmp_path / "empty"))


def _bad_folder(tmp_path, speech_dir):
    files = sorted(speech_dir.glob("*.wav"))
    d = tmp_path / "bad"
    d.mkdir()
    (d / "good1.wav").write_bytes(files[0].read_bytes())
    (d / "good2.flac").write_bytes(b"")
    sf.write(d / "good2.flac", read_audio(files[1], 44100), 44100)
    (d / "empty.wav").write_bytes(b"")
    (d / "header_only.wav").write_bytes(files[2].read_bytes()[:44])
    (d / "text.mp3").write_text("this is not an mp3 file\n")
    (d / "noise.ogg").write_bytes(os.urandom(5000))
    sf.write(d / "tiny.wav", np.zeros(100, np.float32), 16000)  # shorter than the 400-sample receptive field
    sf.write(d / "silence.wav", np.zeros(16000, np.float32), 16000)
    return d


def test_scan_counts_and_names_bad_files(tmp_path, speech_dir, caplog):
    d = _bad_folder(tmp_path, speech_dir)
    good, bad = scan(find_audio(str(d)), CFG)
    assert sorted(os.path.basename(c.name) for c in good) == ["good1.wav", "good2.flac", "silence.wav"]
    reasons = {os.path.basename(n): why for n, why in bad}
    assert set(reasons) == {"empty.wav", "header_only.wav", "text.mp3", "noise.ogg", "tiny.wav"}
    assert "shorter than 400" in reasons["tiny.wav"]
    report = scan_report(good, bad, 16000)
    assert "usable files: 3   skipped: 5" in report and "44100 Hz x1" in report and "tiny.wav" in report

    with pytest.raises(BadAudioError, match=r"\.(wav|mp3|ogg)"):
        scan(find_audio(str(d)), CFG, strict=True)

    with caplog.at_level(logging.WARNING):
        ds = build_audio_dataset(DataConfig(path=str(d)), CFG, seed=0)
    assert len(ds) == 3
    assert "5 of 8 files skipped" in caplog.text and "text.mp3" in caplog.text
    silence = ds[[os.path.basename(c.name) for c in ds.clips].index("silence.wav")]["input_values"]
    assert np.isfinite(silence).all()


def test_file_that_fails_at_read_time_is_replaced_and_counted(tmp_path, speech_dir):
    d = tmp_path / "c"
    d.mkdir()
    for f in sorted(speech_dir.glob("*.wav"))[:3]:
        (d / f.name).write_bytes(f.read_bytes())
    ds = build_audio_dataset(DataConfig(path=str(d)), CFG, seed=0)
    os.remove(ds.clips[0].name)  # gone after the scan, as on a flaky network disk
    item = ds[0]
    assert ds.failed == [ds.clips[0].name]
    np.testing.assert_array_equal(item["input_values"], ds.load(1, np.random.default_rng(0)))
    strict = AudioDataset(ds.clips, CFG, 0, strict=True)
    with pytest.raises(BadAudioError, match=os.path.basename(ds.clips[0].name)):
        strict[0]


def test_long_files_are_cropped_to_a_seeded_window(tmp_path, verse):
    long = np.tile(verse, int(np.ceil(600 * 44100 / len(verse) / 2)))  # about 10 minutes at 44.1 kHz
    import soxr

    sf.write(tmp_path / "long.flac", soxr.resample(long, 22050, 44100).astype(np.float32), 44100)
    ds = AudioDataset(scan(find_audio(str(tmp_path / "long.flac")), CFG)[0], CFG, seed=3)
    assert ds.lengths == [16000]
    a, b = ds[0]["input_values"], ds[0]["input_values"]
    np.testing.assert_array_equal(a, b)
    ds.set_epoch(1)
    assert len(a) == 16000 and not np.array_equal(a, ds[0]["input_values"])


def test_collator_pads_and_masks_real_frames_only(speech_dir):
    cfg = AudioConfig()
    wavs = [normalize(read_audio(f)) for f in sorted(speech_dir.glob("*.wav"))[:3]]
    wavs[1] = wavs[1][:8000]
    examples = [{"input_values": w, "seed": (0, 0, i)} for i, w in enumerate(wavs)]
    mask = MaskConfig(kind="block", prob=0.5, length=5, adjust=0.05)
    batch = AudioCollator(mask, cfg, clones=3)(examples)
    x, att, m = batch["inputs"]["input_values"], batch["inputs"]["attention_mask"], batch["mask"]
    assert x.shape == (3, max(len(w) for w in wavs)) and m.shape[0] == 9
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    hf = Data2VecAudioModel(Data2VecAudioConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                                intermediate_size=32, num_conv_pos_embedding_groups=2))
    frames = hf._get_feat_extract_output_lengths(att.sum(-1))
    assert m.shape[1] == int(frames.max())
    for i in range(3):
        assert int(att[i].sum()) == len(wavs[i]) and float(x[i, len(wavs[i]):].abs().sum()) == 0
        for c in range(3):
            row = m[i * 3 + c]
            assert int(row.sum()) == int(int(frames[i]) * 0.5) and not row[int(frames[i]):].any()
    assert not torch.equal(m[0], m[1])  # clones are different masks
    again = AudioCollator(mask, cfg, clones=3)(examples)["mask"]
    assert torch.equal(m, again)  # masks follow the example seeds


def test_span_masks_for_v1(speech_dir):
    wav = normalize(read_audio(sorted(speech_dir.glob("*.wav"))[0]))
    batch = AudioCollator(MaskConfig(kind="span", prob=0.65, length=10), AudioConfig())(
        [{"input_values": wav, "seed": (0, 0, 0)}])
    ratio = float(batch["mask"].float().mean())
    assert 0.3 < ratio < 0.7  # wav2vec2 span masking covers about half of the frames


def test_streamed_folder_skips_and_names_bad_files_as_they_come(tmp_path, speech_dir, caplog):
    d = _bad_folder(tmp_path, speech_dir)
    with caplog.at_level(logging.WARNING):
        examples = first_pass(build_audio_dataset(DataConfig(path=str(d), streaming=True), CFG, seed=0))
    assert len(examples) == 3  # good1, good2, silence: nothing lost, nothing scanned up front
    assert all(np.isfinite(e["input_values"]).all() and len(e["input_values"]) <= 16000 for e in examples)
    for name in ("empty.wav", "header_only.wav", "text.mp3", "noise.ogg", "tiny.wav"):
        assert f"skipped {d / name}" in caplog.text
    with pytest.raises(BadAudioError, match="data.strict"):
        first_pass(build_audio_dataset(DataConfig(path=str(d), streaming=True, strict=True), CFG, seed=0))


def test_streamed_datasets_folder_matches_the_files(tmp_path, speech_dir):
    import datasets

    files = sorted(speech_dir.glob("*.wav"))[:5]
    ds = datasets.Dataset.from_dict({"audio": [str(f) for f in files]}).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(path=str(tmp_path / "saved"), streaming=True, shuffle_buffer=0)
    streamed = first_pass(build_audio_dataset(cfg, CFG, seed=0))
    direct = first_pass(build_audio_dataset(DataConfig(path=",".join(map(str, files)), streaming=True,
                                                      shuffle_buffer=0), CFG, seed=0))
    assert len(streamed) == len(direct) == 5
    for a, b in zip(streamed, direct, strict=True):
        np.testing.assert_array_equal(a["input_values"], b["input_values"])
