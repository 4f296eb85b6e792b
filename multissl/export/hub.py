"""Publish an exported model folder to the Hugging Face Hub with huggingface_hub."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def push(model_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False,
         endpoint: str | None = None, commit_message: str = "Upload encoder pretrained with multissl") -> str:
    """Create ``repo_id`` if needed and upload ``model_dir`` (a ``multissl export`` or ``multissl word2vec``
    folder) in one
    commit; returns the commit URL. The token is passed to the client only, never logged.

    >>> push("out/t1", "my-org/my-text-encoder")  # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    folder = Path(model_dir)
    if not (folder / "README.md").is_file() or not any((folder / f).is_file() for f in
                                                       ("config.json", "vectors.safetensors")):
        raise FileNotFoundError(f"{folder}: no README.md with config.json or vectors.safetensors; push a folder "
                                "written by 'multissl export' or 'multissl word2vec'")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo_id {repo_id!r}: expected NAME or OWNER/NAME")
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    log.info("uploading %s to %s", folder, url)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", None) or url)
