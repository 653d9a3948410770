"""Lexical helpers the hidden preferences are built from: word lists, counts and a few
regular expressions. Deliberately simple: they stand in for a person's taste."""

from __future__ import annotations

import re
from collections.abc import Iterable

_LIST_ITEM = re.compile(r"(?m)^\s*(?:[-*•]|\d{1,2}[.)])\s+\S")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_CONTRACTION = re.compile(r"(?i)\b[a-z]+'(?:s|re|ll|ve|d|t|m)\b")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]+")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
STOPWORDS = frozenset({  # only words of four letters or more matter (``key_words``)
    "about", "into", "over", "after", "before", "were", "been", "being", "does", "have",
    "could", "should", "would", "will", "what", "which", "whom", "whose", "when", "where",
    "this", "that", "these", "those", "there", "here", "your", "their", "them", "some",
    "good", "best", "better", "make", "much", "many", "more", "most", "very", "just",
    "also", "than", "then", "such", "with", "from", "give", "know", "name", "tell",
})


def words(text: str) -> int:
    return len(text.split())


def list_items(text: str) -> int:
    """Lines that start like a bulleted or numbered list item."""
    return len(_LIST_ITEM.findall(text))


def word_tokens(text: str) -> list[str]:
    """Lower-cased words (letters, with an inner apostrophe), punctuation dropped."""
    return [w.lower() for w in _WORD.findall(text)]


def contractions(text: str) -> int:
    """Words like "don't", "it's", "you'll"."""
    return len(_CONTRACTION.findall(text))


def numbers(text: str) -> int:
    return len(_NUMBER.findall(text))


def names(text: str) -> int:
    """Capitalised words inside a sentence ("Tokyo", "Shakespeare"): named things."""
    return sum(len(_NAME.findall(s)) for s in sentences(text))


def sentences(text: str) -> list[str]:
    """Sentences and lines, stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def key_words(prompt: str) -> set[str]:
    """The prompt's content words: four letters or more, not a stop word."""
    return {w for w in word_tokens(prompt) if len(w) >= 4 and w not in STOPWORDS}


def share_long_words(text: str, min_letters: int = 10) -> float:
    """Share of words with at least ``min_letters`` letters (0 for an empty text)."""
    toks = word_tokens(text)
    return sum(len(w) >= min_letters for w in toks) / len(toks) if toks else 0.0


class Lexicon:
    """A word list matched case-insensitively as whole words or phrases; a trailing
    ``*`` allows any ending (``pigment*`` matches "pigments")."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = tuple(terms)
        alternatives = sorted((re.escape(t.rstrip("*")) + (r"[a-z]*" if t.endswith("*") else "")
                               for t in self.terms), key=len, reverse=True)
        self._pattern = re.compile(r"(?<![A-Za-z])(?:" + "|".join(alternatives) + r")(?![A-Za-z])",
                                   re.IGNORECASE)

    def count(self, text: str) -> int:
        return len(self._pattern.findall(text))

    def last_end(self, text: str) -> int | None:
        """Character offset just after the last match, or None without a match."""
        ends = [m.end() for m in self._pattern.finditer(text)]
        return ends[-1] if ends else None
