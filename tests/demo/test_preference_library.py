"""The preference library: every family orders a clearly better and a clearly worse
answer the right way, its scores are graded, its poles conflict, and families declared
independent do not move each other's scores."""

from __future__ import annotations

import itertools

import pytest

from demo.preferences import (
    FAMILIES,
    INDEPENDENT_FAMILIES,
    PREFERENCES,
    Preference,
    conflicting,
    independent,
    independent_of,
    relation,
)
from demo.preferences.families import LEXICONS

PROMPT = "How can I sleep better?"

# family -> (an answer with clearly more of the trait, one with clearly less)
EXAMPLES: dict[str, tuple[str, str]] = {
    "length": ("Keep the room dark and cool, go to bed at the same time every night, and "
               "leave your phone in another room an hour before bed.", "Keep the room dark."),
    "layout": ("Try these:\n- Go to bed at the same time\n- Keep the room dark\n- Skip late coffee",
               "Try these: go to bed at the same time, keep the room dark and skip late coffee."),
    "formality": ("Therefore, ensure the bedroom is dark and avoid coffee late.",
                  "Hey, just keep the bedroom dark and skip coffee, it's super easy!"),
    "examples": ("Keep a calm routine. For example, read for 20 minutes before bed.",
                 "Keep a calm routine. Read quietly before bed."),
    "warmth": ("I hope you enjoy the evening; good luck with your sleep.",
               "Keep the evening quiet and note your sleep."),
    "vocabulary": ("Melatonin and cortisol follow a circadian rhythm, so consistent light "
                   "exposure helps.", "The body clock follows the day, so steady light helps."),
    "summary": ("Dim the lights and skip late coffee. In short, a calm routine helps you sleep.",
                "Dim the lights and skip late coffee. A calm routine helps you sleep."),
    "questions": ("Keep a regular bedtime. What time do you usually go to bed?",
                  "Keep a regular bedtime. Note the time you usually go to bed."),
    "certainty": ("A bath might help, and reading often works.",
                  "A bath will help, and reading always works."),
    "address": ("You should keep your room dark.", "One should keep the room dark."),
    "topic": ("To sleep better, keep your sleep schedule steady.",
              "Keep a steady schedule and a dark room."),
}
CLEAR, NEGLIGIBLE = 0.9, 0.25
"""A clear preference moves a score by about 1 (the labelers' noise is 0.2-0.3); an
unrelated family's score should move by far less."""


def _delta(pref: Preference, family: str) -> float:
    better, worse = EXAMPLES[family]
    return pref.score(PROMPT, better) - pref.score(PROMPT, worse)


def test_the_library_is_wide_enough_and_mostly_about_content_or_manner() -> None:
    assert set(EXAMPLES) == set(FAMILIES)
    assert len(FAMILIES) >= 8
    content = [f for f in FAMILIES.values() if f.kind in ("content", "manner")]
    assert len(content) >= len(FAMILIES) / 2
    assert {p.family.name for p in PREFERENCES.values()} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_each_preference_orders_a_clearly_better_and_worse_answer(name: str) -> None:
    pref = PREFERENCES[name]
    delta = _delta(pref, pref.family.name)
    # the example pair has more of the trait first: the high pole prefers it, the low not
    assert delta * pref.sign >= CLEAR, (name, delta)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scores_are_graded_not_yes_or_no(family: str) -> None:
    trait = FAMILIES[family].trait
    better, worse = EXAMPLES[family]
    more = f"{better} {better}"  # the trait's markers twice over
    scores = [trait(PROMPT, t) for t in (worse, better, more)]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.parametrize(("a", "b"), [
    (a, b) for a, b in itertools.combinations(sorted(PREFERENCES), 2)
    if PREFERENCES[a].family is PREFERENCES[b].family])
def test_the_poles_of_a_family_conflict(a: str, b: str) -> None:
    pa, pb = PREFERENCES[a], PREFERENCES[b]
    assert conflicting(pa, pb) and relation(pa, pb) == "conflicting"
    delta_a, delta_b = _delta(pa, pa.family.name), _delta(pb, pa.family.name)
    assert delta_a * delta_b < 0, (delta_a, delta_b)  # opposite signs on the same texts


@pytest.mark.parametrize("pair", sorted(tuple(sorted(p)) for p in INDEPENDENT_FAMILIES))
def test_independent_families_do_not_move_each_other(pair: tuple[str, str]) -> None:
    f, g = pair
    pf = next(p for p in PREFERENCES.values() if p.family.name == f)
    pg = next(p for p in PREFERENCES.values() if p.family.name == g)
    assert independent(pf, pg) and independent(pg, pf)
    assert abs(_delta(pf, f)) >= CLEAR and abs(_delta(pg, f)) <= NEGLIGIBLE, (f, g)
    assert abs(_delta(pg, g)) >= CLEAR and abs(_delta(pf, g)) <= NEGLIGIBLE, (g, f)


@pytest.mark.parametrize("pair", sorted(tuple(sorted(p)) for p in INDEPENDENT_FAMILIES
                                        if p <= LEXICONS.keys()))
def test_no_word_counts_for_two_independent_families(pair: tuple[str, str]) -> None:
    f, g = pair
    for lex_f, lex_g in itertools.product(LEXICONS[f], LEXICONS[g]):
        assert not [t for t in lex_f.terms if lex_g.count(t.rstrip("*"))], (f, g)
        assert not [t for t in lex_g.terms if lex_f.count(t.rstrip("*"))], (g, f)


def test_declarations_name_real_families_and_leave_correlated_ones_undeclared() -> None:
    assert all(len(p) == 2 and p <= FAMILIES.keys() for p in INDEPENDENT_FAMILIES)
    # a casual answer is often a warm one; any marker adds words: neither is declared
    assert relation(PREFERENCES["casual"], PREFERENCES["warm"]) == "undeclared"
    assert relation(PREFERENCES["concise"], PREFERENCES["examples"]) == "undeclared"
    assert relation(PREFERENCES["formal"], PREFERENCES["formal"]) == "same"
    assert relation(PREFERENCES["warm"], PREFERENCES["bullets"]) == "independent"
    others = independent_of(PREFERENCES["formal"])
    assert {p.family.name for p in others} >= {"layout", "examples"}
    assert len({p.family.name for p in others}) == len(others)  # one pole per family


def test_a_preference_can_depend_on_the_prompt() -> None:
    on_topic, summary = PREFERENCES["on_topic"], PREFERENCES["summary"]
    answer = "Keep your sleep schedule steady."
    assert on_topic.score(PROMPT, answer) > on_topic.score("What is a healthy snack?", answer)
    closing = "Dim the lights. In short, sleep comes with a routine."
    assert summary.score(PROMPT, closing) > summary.score("What is a healthy snack?", closing)
    # a question back to the user counts; restating the prompt does not
    assert PREFERENCES["questions"].score(PROMPT, "How can I sleep better? Dim lights.") == 0
