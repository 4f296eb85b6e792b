"""Tokenizers trained on the user's corpus and saved so that ``AutoTokenizer.from_pretrained`` loads them.

BPE (byte-level, RoBERTa special tokens) and WordPiece (BERT special tokens) are trained with
``tokenizers``; Unigram with ``sentencepiece``, then converted to a ``tokenizers`` Unigram model so
that loading it needs no sentencepiece.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iter_lines(files: Sequence[str | Path], stats: dict[str, int] | None = None) -> Iterator[str]:
    """Non-blank lines of text files; invalid UTF-8 bytes are replaced and counted in ``stats``."""
    stats = stats if stats is not None else {}
    for f in files:
        with open(f, "rb") as fh:
            for raw in fh:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    stats["invalid_utf8_lines"] = stats.get("invalid_utf8_lines", 0) + 1
                    stats.setdefault("invalid_utf8_first", str(f))
                line = line.strip()
                if line:
                    yield line
                else:
                    stats["blank_lines"] = stats.get("blank_lines", 0) + 1


def expand_files(paths: Sequence[str | Path], suffixes: tuple[str, ...] = (".txt",)) -> list[Path]:
    """Files named, plus files under folders named (recursively, by suffix), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files under {', '.join(map(str, paths))}")
    return out


def train_tokenizer(
    files: Sequence[str | Path],
    out: str | Path,
    kind: Literal["bpe", "wordpiece", "unigram"] = "bpe",
    vocab_size: int = 32000,
    min_frequency: int = 2,
    overwrite: bool = False,
):
    """Train a tokenizer on text ``files`` and save it to ``out``; returns the loaded tokenizer.

    >>> tok = train_tokenizer(["corpus.txt"], "tok/", kind="bpe", vocab_size=8000)  # doctest: +SKIP
    >>> AutoTokenizer.from_pretrained("tok/")  # doctest: +SKIP
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    files = expand_files(files)
    stats: dict[str, int] = {}
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=ROBERTA_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(iter_lines(files, stats), trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
        specials = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=BERT_SPECIALS)
        tok.train_from_iterator(iter_lines(files, stats), trainer)
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
        specials = dict(bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]",
                        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    elif kind == "unigram":
        tok = _train_unigram(files, vocab_size, stats)
        specials = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    else:
        raise ValueError(f"--kind: unknown tokenizer kind {kind!r} (bpe, wordpiece, unigram)")
    if stats.get("invalid_utf8_lines"):
        log.warning("%d lines with invalid UTF-8 bytes were read with replacement characters (first in %s)",
                    stats["invalid_utf8_lines"], stats["invalid_utf8_first"])
    if tok.get_vocab_size() <= len(ROBERTA_SPECIALS):
        raise ValueError(f"{', '.join(map(str, files))}: no text to train a tokenizer on")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tok-", dir=out.parent if out.parent.exists() else None))
    fast.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return AutoTokenizer.from_pretrained(out)


def _train_unigram(files: Sequence[Path], vocab_size: int, stats: dict[str, int]):
    """sentencepiece Unigram, converted to a ``tokenizers`` Unigram with the same pieces and scores."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with tempfile.TemporaryDirectory() as d:
        text = Path(d) / "corpus.txt"
        with open(text, "w", encoding="utf-8") as fh:
            for line in iter_lines(files, stats):
                fh.write(line + "\n")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=f"{d}/spm", vocab_size=vocab_size, model_type="unigram",
            bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"],
            bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            hard_vocab_limit=False, minloglevel=2, normalization_rule_name="nmt_nfkc",
        )
        sp = spm.SentencePieceProcessor(model_file=f"{d}/spm.model")
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(ROBERTA_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tok
