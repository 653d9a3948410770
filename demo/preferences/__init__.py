"""Hidden preferences of simulated users, and the noisy labelers who apply them.

A library of preference families (``families``), how they relate (``relations``:
conflicting poles, independent families) and the labelers (``base``). These are the
simulated people's hidden tastes: the product never imports them.
"""

from demo.preferences.base import Family, Labeler, Preference, win
from demo.preferences.families import FAMILIES, PREFERENCES
from demo.preferences.relations import (
    INDEPENDENT_FAMILIES,
    conflicting,
    independent,
    independent_of,
    relation,
)
from demo.preferences.text import list_items, words

__all__ = [
    "FAMILIES", "INDEPENDENT_FAMILIES", "PREFERENCES", "Family", "Labeler", "Preference",
    "conflicting", "independent", "independent_of", "list_items", "relation", "win", "words",
]
