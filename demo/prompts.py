"""The built-in prompt set: everyday questions a chat assistant gets.

The first ``EVAL_PROMPTS`` are held out: simulated users never rate answers to them,
and win rates are measured on them only.
"""

from __future__ import annotations

EVAL_PROMPTS = 8

PROMPTS: tuple[str, ...] = (
    # held out for evaluation
    "How can I sleep better?",
    "What should I eat for breakfast?",
    "How do I start running?",
    "How can I save money each month?",
    "What makes a good presentation?",
    "How do I keep houseplants alive?",
    "How can I learn a new language?",
    "How do I make my mornings less rushed?",
    # used for feedback
    "Give me a tip for staying focused.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "How do plants grow?",
    "What is a healthy lunch?",
    "How do I write a polite email?",
    "What should I pack for a weekend trip?",
    "How can I drink more water?",
    "What is a good way to relax after work?",
    "How do I clean a cast iron pan?",
    "How can I be a better listener?",
    "What are the benefits of walking?",
    "How do I plan a small garden?",
    "How do I prepare for a job interview?",
    "What is a simple dinner to cook?",
    "How do I keep my desk tidy?",
    "How can I remember names better?",
    "What should I know before adopting a dog?",
    "How do I make a budget?",
    "How do I stop procrastinating?",
)


def eval_prompts() -> tuple[str, ...]:
    return PROMPTS[:EVAL_PROMPTS]


def feedback_prompts() -> tuple[str, ...]:
    return PROMPTS[EVAL_PROMPTS:]
