"""Varied candidate answers for reward-model benchmarks, composed from parts.

Each answer to a topic combines independent choices (register, warmth, an example or
not, technical or plain wording, hedged or confident claims, a question back, a closing
summary, second person or impersonal, list or prose, on or off the question's topic,
more or fewer sentences), so that every preference family of ``demo.preferences``
varies across the candidates of one ranking, as sampled model answers would. The
reward model never sees these parts: only the composed text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    question: str
    plain: tuple[str, ...]
    technical: tuple[str, ...]
    example: str


TOPICS = (
    Topic("How do I keep basil alive?",
          ("Give your basil plenty of sun and water it when the soil feels dry.",
           "Pinch off the top leaves so the plant grows bushy."),
          ("Basil needs six hours of photosynthetically active light and well-drained "
           "substrate.", "Apical pruning redirects auxin and stimulates lateral branching."),
          "For example, a pot on a south window with water every 2 days works well."),
    Topic("How can I sleep better?",
          ("Go to bed at the same time every night and keep the room dark.",
           "Avoid screens for an hour before bed."),
          ("Consistent circadian entrainment stabilises melatonin secretion.",
           "Blue-light exposure suppresses melatonin via melanopsin photoreceptors."),
          "For instance, lights out at 10:30 and no phone after 9:30."),
    Topic("How do I start saving money?",
          ("Set a small amount aside each payday before you spend anything.",
           "Write down what you spend for a month to see where it goes."),
          ("Automate a fixed-percentage transfer to a high-yield savings account.",
           "Track discretionary expenditure categories to compute your savings rate."),
          "For example, moving 50 dollars every Friday adds up to 2,600 a year."),
    Topic("How do I learn to cook?",
          ("Start with a few simple dishes and cook them until they feel easy.",
           "Taste as you go and adjust the salt."),
          ("Master foundational techniques such as emulsification and the Maillard "
           "reaction.", "Calibrate seasoning iteratively by tasting throughout."),
          "For instance, learn an omelette, a soup and a pasta sauce first."),
    Topic("How do I get better at running?",
          ("Run slowly most days and a little faster once a week.",
           "Add a few minutes each week, not more."),
          ("Accumulate aerobic volume in zone two and add one threshold session weekly.",
           "Progressive overload should not exceed a ten percent weekly increase."),
          "For example, three easy 20-minute runs and one run with 4 fast minutes."),
    Topic("How do I make my code easier to read?",
          ("Use clear names and keep each function short.",
           "Delete code you do not need."),
          ("Apply consistent naming conventions and limit cyclomatic complexity.",
           "Refactor to remove dead code and reduce coupling between modules."),
          "For instance, rename x to total_price and split a 200-line function."),
    Topic("How do I care for a cat?",
          ("Feed it good food, keep fresh water out and play with it every day.",
           "Take it to the vet once a year."),
          ("Provide a taurine-complete diet and environmental enrichment daily.",
           "Schedule annual veterinary examinations and vaccinations."),
          "For example, two small meals and 15 minutes with a feather toy each day."),
    Topic("How do I prepare for a job interview?",
          ("Learn about the company and practise answering common questions out loud.",
           "Prepare a few questions to ask them."),
          ("Research the organisation's strategy and rehearse behavioural answers with "
           "the STAR method.", "Prepare informed questions about team structure."),
          "For instance, practise telling 3 short stories about problems you solved."),
    Topic("How do I keep my houseplants from dying?",
          ("Check the soil before watering and give them enough light.",
           "Most plants die from too much water."),
          ("Monitor substrate moisture and match photosynthetic light requirements.",
           "Overwatering causes root hypoxia and fungal pathogens."),
          "For example, water a pothos only when the top 2 centimetres are dry."),
    Topic("How do I stay focused while studying?",
          ("Work in short blocks with breaks and put your phone in another room.",
           "Pick one task at a time."),
          ("Use timeboxed intervals such as the Pomodoro technique to manage attention.",
           "Minimise context switching and external interruptions."),
          "For instance, 25 minutes of work, then 5 minutes of rest, four times."),
    Topic("How do I make good coffee at home?",
          ("Use fresh beans, grind them just before brewing and use hot, not boiling, "
           "water.", "Keep your equipment clean."),
          ("Grind immediately before extraction and brew at 92 to 96 degrees Celsius.",
           "Maintain a brew ratio near 1:16 for balanced extraction."),
          "For example, 15 grams of coffee to 250 millilitres of water."),
    Topic("How do I learn a new language?",
          ("Practise a little every day and talk with people who speak it.",
           "Listen to songs and shows in the language."),
          ("Combine spaced-repetition vocabulary acquisition with comprehensible input.",
           "Seek conversational immersion to build productive fluency."),
          "For instance, 20 flashcards a day and one conversation a week."),
)
OFF_TOPIC = ("Remember that the weather can change quickly in the mountains.",
             "Many people also enjoy collecting stamps from different countries.",
             "The history of the bicycle goes back to the early nineteenth century.")
OPENERS = {"formal": ("Certainly.", "To answer your question precisely:", "Indeed, therefore:"),
           "casual": ("Sure thing!", "Oh, cool question!", "Yeah, so basically:"),
           "warm": ("I'm so glad you asked, I hope this helps!", "What a lovely goal!"),
           "neutral": ("", "Here is the answer.")}
HEDGES = ("This might depend on your situation, and results usually vary.",
          "It can depend on many things, so perhaps try a few options.")
CONFIDENT = ("This will always work if you stick to it.",
             "This definitely works, without exception.")
QUESTIONS = ("What have you tried so far?", "How much time do you have each week?")
SUMMARIES = ("In short, keep it simple and consistent.",
             "To sum up, small steady habits matter most.")
IMPERSONAL = ("People who do this tend to see results.", "One should be patient with it.")
SECOND_PERSON = ("You will notice the difference soon.", "Your progress will show.")


def compose(topic: Topic, rng: random.Random) -> str:
    """One candidate answer to ``topic.question``, every part chosen at random."""
    core = list(rng.choice((topic.plain, topic.technical)))
    rng.shuffle(core)
    core = core[: rng.randint(1, len(core))]
    parts = [rng.choice(OPENERS[rng.choice(list(OPENERS))]), *core]
    extras = [(0.4, [topic.example]), (0.35, [rng.choice(HEDGES + CONFIDENT)]),
              (0.3, [rng.choice(QUESTIONS)]), (0.3, [rng.choice(IMPERSONAL + SECOND_PERSON)]),
              (0.3, [rng.choice(OFF_TOPIC)])]
    for chance, sentence in extras:
        if rng.random() < chance:
            parts += sentence
    if rng.random() < 0.3:
        parts.append(rng.choice(SUMMARIES))
    parts = [p for p in parts if p]
    if rng.random() < 0.3:  # a list layout
        return "\n".join(f"- {p}" for p in parts)
    return " ".join(parts)
