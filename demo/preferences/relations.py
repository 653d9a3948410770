"""How preferences relate, declared as data so that leakage is measurable.

- *Conflicting*: the two poles of one family (formal vs casual): no single answer
  pleases both, so a shared model cannot serve both users.
- *Independent*: families whose scores do not move together (warmth vs bullets): an
  adapter trained for one should leave the other's score where the base model had it.
- Anything else is left undeclared: the traits may be correlated in real language
  (a casual answer is often a warm one; any added marker adds words), so a change
  there says nothing about leakage.

``tests/demo/test_preference_library.py`` checks each declaration on example texts.
"""

from __future__ import annotations

from typing import Literal

from demo.preferences.base import Preference
from demo.preferences.families import PREFERENCES

_CONTENT_AND_MANNER = ("formality", "examples", "warmth", "vocabulary", "summary",
                       "questions", "certainty", "address", "topic")

INDEPENDENT_FAMILIES: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in (
    # a list's layout is independent of what is said and how
    *(("layout", f) for f in _CONTENT_AND_MANNER),
    ("examples", "formality"), ("examples", "warmth"), ("examples", "vocabulary"),
    ("examples", "summary"), ("examples", "questions"), ("examples", "certainty"),
    ("warmth", "vocabulary"), ("warmth", "summary"), ("warmth", "questions"),
    ("warmth", "certainty"),
    ("vocabulary", "summary"), ("vocabulary", "questions"), ("vocabulary", "certainty"),
    ("summary", "questions"), ("summary", "certainty"), ("summary", "formality"),
    ("questions", "certainty"), ("questions", "formality"),
))

Relation = Literal["same", "conflicting", "independent", "undeclared"]


def relation(a: Preference, b: Preference) -> Relation:
    if a.family is b.family:
        return "same" if a.sign == b.sign else "conflicting"
    if frozenset((a.family.name, b.family.name)) in INDEPENDENT_FAMILIES:
        return "independent"
    return "undeclared"


def conflicting(a: Preference, b: Preference) -> bool:
    return relation(a, b) == "conflicting"


def independent(a: Preference, b: Preference) -> bool:
    return relation(a, b) == "independent"


def independent_of(preference: Preference) -> list[Preference]:
    """The library's preferences independent of ``preference``, one pole per family
    (the other pole's win rate is the mirror image)."""
    seen: set[str] = set()
    out = []
    for p in PREFERENCES.values():
        if independent(preference, p) and p.family.name not in seen:
            seen.add(p.family.name)
            out.append(p)
    return out
