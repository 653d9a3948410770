"""The built-in prompt set: everyday questions a chat assistant gets, some with
one-line answers and some that invite detail.

The first ``EVAL_PROMPTS`` are held out: simulated users never rate answers to them,
and win rates are measured on them only.
"""

from __future__ import annotations

EVAL_PROMPTS = 8

PROMPTS: tuple[str, ...] = (
    # held out for evaluation
    "How can I sleep better?",
    "What is the capital of Japan?",
    "How do I start running?",
    "Why do leaves change color?",
    "What makes a good presentation?",
    "Name a good book for a long flight.",
    "How can I learn a new language?",
    "What is a healthy snack?",
    # used for feedback
    "Give me a tip for staying focused.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "What is the largest planet?",
    "What is a healthy lunch?",
    "How do I write a polite email?",
    "What should I pack for a weekend trip?",
    "Who wrote Romeo and Juliet?",
    "What is a good way to relax after work?",
    "How do I clean a cast iron pan?",
    "What is photosynthesis?",
    "What are the benefits of walking?",
    "How do I plan a small garden?",
    "How do I prepare for a job interview?",
    "What is a simple dinner to cook?",
    "How many legs does a spider have?",
    "How can I remember names better?",
    "What should I know before adopting a dog?",
    "How do I make a budget?",
    "What is the boiling point of water?",
)


def eval_prompts() -> tuple[str, ...]:
    return PROMPTS[:EVAL_PROMPTS]


def feedback_prompts() -> tuple[str, ...]:
    return PROMPTS[EVAL_PROMPTS:]
