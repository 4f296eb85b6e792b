"""word2vec: skip-gram and CBOW with negative sampling, with gensim-compatible output."""

from multissl.word2vec.train import Word2VecConfig, train_word2vec
from multissl.word2vec.vocab import Vocab, build_vocab

__all__ = ["Vocab", "Word2VecConfig", "build_vocab", "train_word2vec"]
