"""Question text -> token ids, as the basic VQA model reads them.

Questions are lower-cased and split at every run of non-word characters, keeping the
punctuation as tokens (``"What color is the star?"`` -> ``what color is the star ?``). A
:class:`Vocabulary` maps tokens to ids (unknown words to ``<unk>``) and pads every question to a
fixed length with ``<pad>``, at the end, as the public basic VQA implementation does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD, UNKNOWN = "<pad>", "<unk>"
_SPLIT = re.compile(r"(\W+)")


def tokenize(question: str) -> list[str]:
    """Lower-cased words and punctuation of ``question``, whitespace dropped."""
    if not isinstance(question, str):
        raise TypeError(f"a question must be a str, got {type(question).__name__}")
    return [token.strip() for token in _SPLIT.split(question.lower()) if token.strip()]


class Vocabulary:
    """An ordered word list: ``words[i]`` has id ``i``. Must contain ``<pad>`` to encode questions."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words):
            duplicate = next(w for w in words if words.count(w) > 1)
            raise ValueError(f"vocabulary lists {duplicate!r} twice")
        self.words = words
        self.ids = {word: i for i, word in enumerate(words)}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        """One word per line (the ``vocab_questions.txt`` / ``vocab_answers.txt`` format)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
        return cls([line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])

    @classmethod
    def of_questions(cls, questions: Iterable[str]) -> Vocabulary:
        """``<pad>``, ``<unk>``, then every token of ``questions`` in sorted order."""
        return cls([PAD, UNKNOWN, *sorted({t for q in questions for t in tokenize(q)})])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.ids

    def id(self, word: str) -> int:
        if word in self.ids:
            return self.ids[word]
        if UNKNOWN in self.ids:
            return self.ids[UNKNOWN]
        raise KeyError(f"word {word!r} is not in the vocabulary, which has no {UNKNOWN!r} entry")

    def encode(self, question: str, length: int) -> torch.Tensor:
        """Token ids of ``question`` padded with ``<pad>`` to ``length``: a (length,) int64 tensor."""
        if PAD not in self.ids:
            raise ValueError(f"this vocabulary has no {PAD!r} entry, so questions cannot be padded")
        tokens = tokenize(question)
        if len(tokens) > length:
            raise ValueError(f"question {question!r} has {len(tokens)} tokens; at most {length} fit")
        ids = [self.id(t) for t in tokens] + [self.ids[PAD]] * (length - len(tokens))
        return torch.tensor(ids, dtype=torch.long)
