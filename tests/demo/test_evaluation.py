"""The demo's measurements on hand-made answers: win rate, leakage, byte-identity."""

from __future__ import annotations

from demo.evaluation import IdentityLedger, Leak, Probe, compare, leakage, worst
from demo.preferences import PREFERENCES
from demo.stats import Tally

PROMPTS = [f"How do I keep plant {i} alive?" for i in range(8)]
PLAIN = "Water it weekly and give it light."
FORMAL = "Therefore, ensure it is watered weekly and obtain sufficient light."
LISTED = "Do this:\n- Water it weekly\n- Give it light"
FORMAL_LISTED = "Therefore, ensure this:\n- Water it weekly\n- Obtain sufficient light"


def _answers(text: str, samples: int = 6) -> dict[tuple[str, int], str]:
    return {(p, i): text for p in PROMPTS for i in range(samples)}


def test_compare_counts_every_shared_comparison() -> None:
    base = _answers(PLAIN)
    formal = PREFERENCES["formal"]
    assert compare(formal, _answers(FORMAL), base) == Tally(wins=48)
    assert compare(PREFERENCES["casual"], _answers(FORMAL), base) == Tally(losses=48)
    assert compare(formal, base, base) == Tally(ties=48)
    partly = {k: FORMAL for k in list(base)[:10]}  # only the keys both have count
    assert compare(formal, partly, base).n == 10


def test_leakage_is_signed_and_can_fail() -> None:
    base, formal = _answers(PLAIN), PREFERENCES["formal"]
    clean = leakage(formal, _answers(FORMAL), base)
    assert {lk.preference for lk in clean} >= {"bullets", "examples"}
    assert all(lk.points == 0 and not lk.leaks() for lk in clean)
    # an adapter that learnt "formal" but also started writing lists leaks onto layout
    leaky = {lk.preference: lk for lk in leakage(formal, _answers(FORMAL_LISTED), base)}
    assert leaky["bullets"].points == 50 and leaky["bullets"].leaks()
    assert worst(list(leaky.values())) is leaky["bullets"]
    # a shift the other way (fewer lists than base) is leakage too: no clipping at 0
    away = {lk.preference: lk for lk in leakage(formal, _answers(FORMAL), _answers(LISTED))}
    assert away["bullets"].points == -50 and away["bullets"].leaks()
    assert worst([]) is None


def test_a_small_or_uncertain_shift_is_not_leakage() -> None:
    noisy = Leak("bullets", Tally(wins=14, ties=20, losses=14), 0.99)
    assert noisy.points == 0 and not noisy.leaks()
    small = Leak("bullets", Tally(wins=4000, ties=0, losses=3600), 0.99)  # +2.6 points
    assert small.interval_points()[0] > 0 and not small.leaks()
    big_but_few = Leak("bullets", Tally(wins=3, ties=0, losses=1), 0.99)  # +25, n=4
    assert not big_but_few.leaks()
    assert Leak("bullets", Tally(wins=40, ties=0, losses=8), 0.99).as_dict()["leaks"]


def test_identity_ledger_compares_only_while_the_users_own_version_is_unchanged() -> None:
    ledger = IdentityLedger()
    assert ledger.observe(Probe("", ("a", "b"))) == "first"
    assert ledger.observe(Probe("", ("a", "b"))) == "identical"
    assert ledger.observe(Probe("", ("a", "B"))) == "mismatch"  # changed under it
    assert ledger.observe(Probe("v1", ("x", "y"))) == "skipped"  # its own new version
    assert ledger.observe(Probe("v1", ("x", "y"))) == "identical"
    assert ledger.as_dict() == {"checks": 3, "mismatches": 1, "skipped": 1}
