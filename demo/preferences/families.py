"""The preference library: eleven families of traits, each a simple lexical score over
(prompt, answer), and their poles as named preferences.

Nine families are about content or manner (formality, examples, warmth, technical
vocabulary, a closing summary, questions back, hedging, second-person address,
staying on the prompt's words); two about length and layout. No word is in two
lists of families declared independent (``relations``). Counts are capped so
that one trait cannot grow without bound, and each marker is worth about 1.
"""

from __future__ import annotations

from demo.preferences.base import Family, Preference
from demo.preferences.text import (
    Lexicon,
    contractions,
    key_words,
    list_items,
    names,
    numbers,
    sentences,
    share_long_words,
    word_tokens,
    words,
)

FORMAL = Lexicon((
    "therefore", "however", "furthermore", "moreover", "consequently", "additionally", "thus",
    "regarding", "ensure", "recommend*", "approximately", "obtain", "assist", "require*",
    "sufficient", "beneficial", "appropriate", "essential", "in order to", "advisable",
    "please note", "prior to", "utili*", "facilitate", "subsequently", "adequate*",
))
CASUAL = Lexicon((
    "hey", "yeah", "gonna", "wanna", "kinda", "sorta", "cool", "awesome", "stuff", "super",
    "pretty much", "totally", "ok", "okay", "lol", "guys", "folks", "grab", "chill", "tons of",
    "a bunch", "btw", "yep", "nope", "basically", "nice", "gotta", "huge",
))
EXAMPLE = Lexicon(("for example", "for instance", "e.g.", "such as", "imagine", "an example",
                   "to illustrate", "consider", "like when", "picture this", "including",
                   "namely", "like a", "like the", "specifically", "in particular"))
WARM = Lexicon((
    "glad", "happy", "hope", "enjoy*", "wonderful", "lovely", "good luck", "take care",
    "gentle", "proud", "encourag*", "rewarding", "fun", "love*", "delight*", "comfort*",
    "kind", "feel better", "well done", "best wishes", "caring", "warmly", "warmth", "cheer*",
    "dear", "understand", "passion*", "beautiful", "amazing", "exciting", "excited",
    "appreciat*", "thank*", "welcome", "friend*", "care", "heart*", "smile*", "joy*",
    "peace*", "calm*", "support*", "fantastic", "great", "relax*", "inspir*",
))
TECHNICAL = Lexicon((
    "circadian", "melatonin", "cortisol", "metaboli*", "aerobic", "anaerobic", "cardiovascular",
    "chlorophyll", "carotenoid*", "anthocyanin*", "pigment*", "photosynthe*", "glucose",
    "protein*", "fiber", "fibre", "nutrient*", "carbohydrate*", "calorie*", "vitamin*",
    "electrolyte*", "hydration", "cognitive", "cognition", "neural", "neuro*", "dopamine",
    "serotonin", "hormon*", "immersion", "phonetic*", "grammar", "syntax", "vocabulary",
    "acquisition", "retention", "spaced repetition", "algorithm*", "wavelength*", "scattering",
    "oxidation", "physiolog*", "biochemi*", "enzyme*", "regimen", "cadence", "endurance",
    "thermoregulation", "atmospher*", "mechanism*", "parameter*", "metric*", "protocol*",
    "optimi*", "efficiency", "framework", "stimul*", "latency", "molecul*",
))
SUMMARY = Lexicon(("in short", "in summary", "to sum up", "to summarize", "overall",
                   "in conclusion", "all in all", "bottom line", "key takeaway", "in a nutshell",
                   "to recap", "in brief", "so,", "ultimately", "in the end", "to conclude",
                   "essentially", "this means", "that is why", "remember"))
HEDGE = Lexicon((
    "might", "may", "perhaps", "possibly", "could", "it depends", "generally", "often",
    "usually", "i think", "likely", "tend to", "tends to", "not always", "in some cases",
    "sometimes", "probably", "somewhat", "arguably", "seems", "appears", "can", "some",
    "possible", "maybe", "depending", "typically", "suggest*",
))
CONFIDENT = Lexicon((
    "always", "definitely", "certainly", "clearly", "must", "will", "the best", "never",
    "simply", "absolutely", "guaranteed", "without a doubt", "the key is", "no doubt",
    "undoubtedly", "sure", "indeed", "in fact", "of course", "crucial", "exactly", "truly",
    "proven", "every",
))
YOU = Lexicon(("you", "your", "yours", "yourself", "yourselves", "you're", "you'll", "you've",
               "you'd"))
IMPERSONAL = Lexicon(("one", "people", "individuals", "someone", "a person", "anyone",
                      "everyone", "persons", "somebody"))
INVITE = Lexicon(("let me know", "tell me", "would you like", "feel free to ask", "any other",
                  "what do you think", "are you", "do you"))

LEXICONS: dict[str, tuple[Lexicon, ...]] = {
    "formality": (FORMAL, CASUAL), "examples": (EXAMPLE,), "warmth": (WARM,),
    "vocabulary": (TECHNICAL,), "summary": (SUMMARY,), "questions": (INVITE,),
    "certainty": (HEDGE, CONFIDENT), "address": (YOU, IMPERSONAL),
}
"""The word lists behind each family's score (none for length, layout and topic)."""


def length(_prompt: str, answer: str) -> float:
    return words(answer) / 10


def listiness(_prompt: str, answer: str) -> float:
    """List lines, up to 4; nothing else (so that the layout stays independent of length,
    words and manner)."""
    return min(list_items(answer), 4)


def formality(_prompt: str, answer: str) -> float:
    casual = CASUAL.count(answer) + contractions(answer) + answer.count("!")
    return min(FORMAL.count(answer), 4) - min(casual, 4)


def examples(_prompt: str, answer: str) -> float:
    """Example markers, and numbers and names as concrete instances."""
    concrete = numbers(answer) + names(answer)
    return min(EXAMPLE.count(answer), 3) + 0.5 * min(concrete, 3)


def warmth(_prompt: str, answer: str) -> float:
    return min(WARM.count(answer), 4)


def technicality(_prompt: str, answer: str) -> float:
    """Domain terms, and the share of long words (0-1 gives 0-2)."""
    return min(TECHNICAL.count(answer), 4) + 2 * share_long_words(answer)


def closing_summary(prompt: str, answer: str) -> float:
    """A summary marker near the end: 1 at the start of the answer, 3 at its end; one more
    when what follows the marker names the prompt's topic."""
    end = SUMMARY.last_end(answer)
    if end is None:
        return 0.0
    tail = set(word_tokens(answer[end:]))
    return 1 + 2 * end / len(answer) + (1.0 if tail & key_words(prompt) else 0.0)


def questions_back(prompt: str, answer: str) -> float:
    """Questions in the answer, other than a restatement of the prompt, and invitations
    to say more (half each)."""
    asked = prompt.strip().lower()
    asks = sum(s.endswith("?") and s.lower() != asked for s in sentences(answer))
    return min(asks, 3) + 0.5 * min(INVITE.count(answer), 2)


def hedging(_prompt: str, answer: str) -> float:
    return min(HEDGE.count(answer), 4) - min(CONFIDENT.count(answer), 4)


def address(_prompt: str, answer: str) -> float:
    return 0.5 * min(YOU.count(answer), 6) - 0.5 * min(IMPERSONAL.count(answer), 6)


def on_topic(prompt: str, answer: str) -> float:
    """Reuses the prompt's key words: the share of them present (0-3), plus mentions."""
    keys = key_words(prompt)
    if not keys:
        return 0.0
    toks = word_tokens(answer)
    present = keys & set(toks)
    return 3 * len(present) / len(keys) + 0.25 * min(sum(t in keys for t in toks), 4)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("length", "length", length),
    Family("layout", "layout", listiness),
    Family("formality", "manner", formality),
    Family("examples", "content", examples),
    Family("warmth", "manner", warmth),
    Family("vocabulary", "content", technicality),
    Family("summary", "content", closing_summary),
    Family("questions", "manner", questions_back),
    Family("certainty", "manner", hedging),
    Family("address", "manner", address),
    Family("topic", "content", on_topic),
)}


def _pole(name: str, family: str, description: str, sign: int = 1) -> Preference:
    return Preference(name, description, FAMILIES[family], sign)


PREFERENCES: dict[str, Preference] = {p.name: p for p in (
    _pole("concise", "length", "short answers, the fewer words the better", -1),
    _pole("detailed", "length", "long, detailed answers"),
    _pole("bullets", "layout", "answers laid out as a bulleted or numbered list"),
    _pole("prose", "layout", "plain prose, no lists", -1),
    _pole("formal", "formality", "a formal register: 'therefore', 'ensure', no slang"),
    _pole("casual", "formality", "a casual register: contractions, 'cool', 'stuff', '!'", -1),
    _pole("examples", "examples", "concrete examples: 'for example', 'such as', numbers"),
    _pole("abstract", "examples", "general principles without examples or figures", -1),
    _pole("warm", "warmth", "warm, encouraging phrasing: 'glad', 'hope', 'enjoy'"),
    _pole("neutral", "warmth", "neutral, matter-of-fact phrasing", -1),
    _pole("technical", "vocabulary", "domain terms and long technical words"),
    _pole("plain", "vocabulary", "plain, everyday words", -1),
    _pole("summary", "summary", "ends with a summary: 'In short, ...'"),
    _pole("questions", "questions", "asks the user questions back"),
    _pole("hedged", "certainty", "hedged claims: 'might', 'usually', 'it depends'"),
    _pole("confident", "certainty", "confident claims: 'always', 'definitely', 'will'", -1),
    _pole("second_person", "address", "speaks to the user: 'you', 'your'"),
    _pole("impersonal", "address", "impersonal: 'one', 'people', no 'you'", -1),
    _pole("on_topic", "topic", "reuses the question's own key words"),
)}
