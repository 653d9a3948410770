"""The personal reward model on recorded feedback: a ``bench.learning`` run replayed.

    python -m bench.reward_replay --run bench/results/learning-run   # about 3 min on 2 cores

``bench.reward_model`` ranks composed answers; this one reads what the model really
answered. The run's trainer journal holds every ranking its simulated users sent
(SmolLM2's sampled answers, ranked with label noise), and its ``results.json`` names each
user's preference. Per ``--settings`` entry (``bench.reward_model.config``: e.g.
``0:all:lexical-0:policy-half``), the reward model is cross-validated by ranking group:
each user's prompts are dealt into ``--folds`` folds by a stable hash (a prompt's
rankings never sit on both sides), and for each fold the learner's steps run on the
rest (the shared part on every user's training folds, then the user's heads), and the
user's policy head ranks the fold's pairs. Reported: per user and setting, the pairwise
accuracy on the held-out pairs the user's noise-free preference decides, with a 95%
Wilson interval and their number; per setting, the paired difference from the first
setting over the same pairs (a t interval; a ranking's pairs are not independent, so the
interval is somewhat narrow).

``--relabel all`` (or a comma-separated list of the library's preferences) asks the same
of preferences nobody in the run held: for each one, a further user takes a recorded
user's answer sets (the run's users in turn) and orders them anew by that preference,
through a labeler with Gumbel noise ``--relabel-noise`` (each answer's noisy utility
drawn once, so a ranking's pairs stay one consistent order). Those users train beside
the recorded ones (their pairs reach the shared part too) and are judged the same way:
the reward model on the answers SmolLM2 really gave, for every preference family at once.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import paired_difference, settle, table, write_result
from bench.reward_model import config, decided
from demo.preferences import PREFERENCES, Labeler, Preference
from demo.stats import wilson
from services.contract.config import KafkaConfig
from trainer.data.examples import UserExamples, build_examples
from trainer.data.preferences import PreferenceConfig
from trainer.ingest.journal import Journal
from trainer.reward.data import PairExample, stable_hash
from trainer.reward.encoder import TextEncoder
from trainer.reward.model import PersonalRewardModel

Data = dict[str, list[PairExample]]


def recorded(run: Path) -> tuple[Data, dict[str, Preference]]:
    """Every user's pairs from the run's journal, and each user's preference."""
    examples, users = recorded_examples(run)
    return {u: ex.pairs for u, ex in examples.items()}, users


def recorded_examples(run: Path, heldout_fraction: float = 0.0, seed: int = 0,
                      events: int | None = None
                      ) -> tuple[dict[str, UserExamples], dict[str, Preference]]:
    """Every user's training material from the run's journal, as the trainer builds it
    (the first ``events`` feedback events of each user, or all; prompts held out as a
    reward model with ``heldout_fraction`` and ``seed`` holds them out), and each user's
    preference."""
    users = {u["user"]: PREFERENCES[u["preference"]]
             for u in json.loads((run / "results.json").read_text())["users"]}
    kafka = KafkaConfig()
    journal = Journal(run / "trainer-state" / "journal.sqlite", kafka.generations_topic,
                      kafka.feedback_topic)
    try:
        examples = {u: build_examples(u, journal.joined(u)[:events], PreferenceConfig(),
                                      heldout_fraction, seed) for u in users}
    finally:
        journal.close()
    return examples, users


def relabelled(pref: Preference, user_id: str, pairs: list[PairExample], noise: float,
               seed: int) -> list[PairExample]:
    """``pairs``' answers ordered by ``pref`` as ``user_id`` would have: every (prompt,
    answer) gets one utility, its score plus Gumbel noise of scale ``noise`` (seeded by
    the texts), and each pair is oriented by the two utilities."""
    labeler = Labeler(user_id, pref, noise)

    def utility(prompt: str, answer: str) -> float:
        rng = random.Random(stable_hash(str(seed), user_id, prompt, answer))
        return labeler.utility(question(prompt), answer, rng)

    out = []
    for p in pairs:
        a, b = utility(p.prompt, p.chosen), utility(p.prompt, p.rejected)
        chosen, rejected = (p.chosen, p.rejected) if a >= b else (p.rejected, p.chosen)
        out.append(PairExample(user_id, p.prompt, chosen, rejected))
    return out


def with_relabelled(data: Data, prefs: dict[str, Preference], names: list[str],
                    noise: float, seed: int) -> tuple[Data, dict[str, Preference]]:
    """``data`` and ``prefs`` with a user per preference in ``names``, named
    ``<preference>@<source user>``, who ranks the recorded users' answers in turn."""
    data, prefs = dict(data), dict(prefs)
    sources = list(data)
    for i, name in enumerate(names):
        source = sources[i % len(sources)]
        user = f"{name}@{source}"
        data[user] = relabelled(PREFERENCES[name], user, data[source], noise, seed)
        prefs[user] = PREFERENCES[name]
    return data, prefs


def question(prompt: str) -> str:
    """The user's last question in a reward-model prompt ("role: content" lines)."""
    return prompt.rsplit("user: ", 1)[-1]


def label_agreement(pref: Preference, pairs: list[PairExample]) -> tuple[int, int]:
    """(agreeing, decided): of the recorded pairs the user's noise-free preference decides,
    how many the user's noisy choices ordered its way. Below 1 the labels the reward model
    learns from contradict the preference on the rest (small score differences drown in
    the labeler's noise)."""
    oriented = decided(pref, pairs, question)
    recorded_ids = {id(q) for q in pairs}  # decided() flips a pair into a new one
    return sum(id(d) in recorded_ids for d in oriented), len(oriented)


def replay_fold(pair: PairExample, folds: int) -> int:
    """The fold of the pair's prompt (a ranking's pairs share it)."""
    return stable_hash("replay", pair.user_id, pair.prompt) % folds


def cross_validate(setting: str, data: Data, prefs: dict[str, Preference], folds: int,
                   encoders: dict[str, TextEncoder]) -> dict[str, list[bool]]:
    """Per user, whether the policy head ranked each decided held-out pair right (in one
    order: fold by fold, pairs in journal order). Every fold and setting that pools the
    same encoder, depths and pooling shares one frozen encoder from ``encoders`` (and its
    cache)."""
    cfg = replace(config(setting), heldout_fraction=0.0)  # the folds hold out instead
    if cfg.tuned_layers:  # trained top layers would carry one fold's training to the next
        raise SystemExit(f"setting {setting!r}: the replay needs a frozen encoder "
                         "(tuned_layers 0)")
    key = (f"{cfg.backbone}:{cfg.layer_pooling}:{cfg.pooling}:{cfg.normalize}:"
           f"{cfg.completion_pooling}")
    if key not in encoders:
        encoders[key] = PersonalRewardModel(cfg).encoder
    right: dict[str, list[bool]] = {u: [] for u in data}
    for f in range(folds):
        rm = PersonalRewardModel(cfg, encoders[key])
        train = {u: [p for p in ps if replay_fold(p, folds) != f] for u, ps in data.items()}
        everyone = [p for ps in train.values() for p in ps]
        for user in data:  # a turn of each user, as the learner runs them
            rm.train_shared(everyone)
            rm.train_user(user, train[user])
        for user, pairs in data.items():
            held = decided(prefs[user], [p for p in pairs if replay_fold(p, folds) == f],
                           question)
            if held:
                r = rm.score(user, [p.prompt for p in held] * 2,
                             [p.chosen for p in held] + [p.rejected for p in held])
                right[user] += (r[:len(held)] > r[len(held):]).tolist()
    return right


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="bench/results/learning-run",
                   help="a bench.learning run directory (results.json, trainer-state/)")
    p.add_argument("--settings", default="0:all:lexical-0:policy-half,0:all:lexical-0,0:all",
                   help="bench.reward_model settings compared side by side")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--relabel", default="",
                   help="library preferences (or 'all') whose users rank the recorded answers")
    p.add_argument("--relabel-noise", type=float, default=0.2)
    p.add_argument("--relabel-seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    torch.set_num_threads(args.threads)
    data, prefs = recorded(Path(args.run))
    recorded_users = list(data)
    if args.relabel:
        names = list(PREFERENCES) if args.relabel == "all" else args.relabel.split(",")
        unknown = [n for n in names if n not in PREFERENCES]
        if unknown:
            raise SystemExit(f"--relabel: unknown preferences {unknown} (known: "
                             f"{', '.join(PREFERENCES)})")
        data, prefs = with_relabelled(data, prefs, names, args.relabel_noise,
                                      args.relabel_seed)
    settings, encoders = args.settings.split(","), {}
    results = {s: cross_validate(s, data, prefs, args.folds, encoders) for s in settings}
    rows, payload = [], {}
    for user in data:
        agreeing, n_decided = label_agreement(prefs[user], data[user])
        row: list[Any] = [user, prefs[user].name, len(data[user]),
                          len(results[settings[0]][user]),
                          f"{agreeing / max(n_decided, 1):.2f} ({agreeing}/{n_decided})"]
        payload.setdefault("label_agreement", {})[user] = {"agreeing": agreeing,
                                                           "decided": n_decided}
        for s in settings:
            hits = results[s][user]
            low, high = wilson(sum(hits), len(hits))
            row.append(f"{sum(hits) / max(len(hits), 1):.2f} [{low:.2f}, {high:.2f}]")
            payload.setdefault(s, {})[user] = {"accuracy": sum(hits) / max(len(hits), 1),
                                               "low": low, "high": high, "n": len(hits)}
        rows.append(row)
    groups = {"mean": list(data)}
    if args.relabel:
        groups |= {"mean, recorded users": recorded_users,
                   "mean, relabelled users": [u for u in data if u not in recorded_users]}
    means = {}
    for label, users in groups.items():
        means[label] = {s: statistics.mean(payload[s][u]["accuracy"] for u in users)
                        for s in settings}
        rows.append([label, "", sum(len(data[u]) for u in users),
                     sum(len(results[settings[0]][u]) for u in users), ""]
                    + [f"{means[label][s]:.3f}" for s in settings])
    print(table(["user", "preference", "pairs", "decided pairs", "labels agree", *settings],
                rows))
    diffs = []
    for s in settings[1:]:
        ours = [float(x) for u in data for x in results[s][u]]
        base = [float(x) for u in data for x in results[settings[0]][u]]
        d = paired_difference(ours, base)
        diffs.append([s, f"{d['mean']:+.3f} [{d['mean_low']:+.3f}, {d['mean_high']:+.3f}]",
                      int(d["n"])])
        payload.setdefault("differences", {})[s] = d
    if diffs:
        print(table([f"setting - {settings[0]}", "accuracy difference [95%]", "pairs"], diffs))
    write_result("reward_replay", vars(args) | {"users": {u: prefs[u].name for u in data}},
                 {"results": payload, "means": means["mean"], "group_means": means},
                 args.out or None)


if __name__ == "__main__":
    main()
