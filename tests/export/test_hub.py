import logging

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from multissl.export.hf import export
from multissl.export.hub import push
from multissl.recipe import load_recipe
from multissl.train import pretrain
from tests.conftest import TINY
from tests.export.hub_fake import FakeHub

TOKEN = "hf_fakeTokenThatMustNeverBeLogged123"


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as c

    with FakeHub() as fake:
        monkeypatch.setattr(c, "ENDPOINT", fake.url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        yield fake


def test_push_then_load_back_from_the_hub(hub, tmp_path, kjv_file, tokenizer_dir, caplog, capsys):
    recipe = load_recipe("recipes/text/tiny.yaml", [*TINY, "--data", str(kjv_file), "--tokenizer",
                                                    str(tokenizer_dir), "--output_dir", str(tmp_path / "run"),
                                                    "--max_steps", "2"])
    out = export(pretrain(recipe), tmp_path / "out")
    with caplog.at_level(logging.DEBUG):
        url = push(out, "my-org/tiny-text", token=TOKEN, endpoint=hub.url)
    assert url.startswith(hub.url + "/my-org/tiny-text/commit/")
    assert sorted(hub.repos["my-org/tiny-text"]) == sorted(p.name for p in out.iterdir())
    auth = [v for _, _, h in hub.requests for k, v in h.items() if k.lower() == "authorization"]
    assert auth and all(a == f"Bearer {TOKEN}" for a in auth)  # the token went to the Hub ...
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err  # ... and nowhere else
    assert TOKEN not in hub.repos["my-org/tiny-text"]["README.md"].decode()

    model = AutoModel.from_pretrained("my-org/tiny-text", cache_dir=tmp_path / "cache").eval()
    tok = AutoTokenizer.from_pretrained("my-org/tiny-text", cache_dir=tmp_path / "cache")
    local = AutoModel.from_pretrained(out).eval()
    batch = tok(["In the beginning God created the heaven and the earth."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, local(**batch).last_hidden_state)


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="no README.md"):
        push(tmp_path, "a/b", endpoint="http://127.0.0.1:9")


def test_push_a_speech_encoder_and_load_it_with_its_feature_extractor(hub, tmp_path, speech_dir):
    from transformers import AutoFeatureExtractor

    from multissl.modalities.audio.data import read_audio
    from tests.conftest import TINY_AUDIO

    recipe = load_recipe("recipes/audio/tiny.yaml", [*TINY_AUDIO, "--data", str(speech_dir), "--output_dir",
                                                     str(tmp_path / "run"), "--max_steps", "2"])
    out = export(pretrain(recipe), tmp_path / "out")
    push(out, "my-org/tiny-speech", token=TOKEN, endpoint=hub.url)
    card = hub.repos["my-org/tiny-speech"]["README.md"].decode()
    assert "Data2VecAudioForCTC" in card and "masked_spec_embed" in card
    model = AutoModel.from_pretrained("my-org/tiny-speech", cache_dir=tmp_path / "cache").eval()
    fe = AutoFeatureExtractor.from_pretrained("my-org/tiny-speech", cache_dir=tmp_path / "cache")
    wav = read_audio(sorted(speech_dir.glob("*.wav"))[0])
    batch = fe([wav], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state,
                                   AutoModel.from_pretrained(out).eval()(**batch).last_hidden_state, rtol=0, atol=0)
