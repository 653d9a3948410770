"""The personal reward model: what it learns, per preference family, and what it costs.

    python -m bench.reward_model                 # about 10 min on 2 cores

One simulated user per preference family of ``demo.preferences`` (plus both poles of
formality, which conflict) ranks ``--rankings`` sets of ``--candidates`` varied answers
(``bench.answers``) with Bradley-Terry label noise. The model trains as the learner
does: for each user, a turn of the shared part (everyone's examples) then the user's
heads; finally every user's heads are refreshed. Reported, for each ``--settings``
entry side by side (``tuned_layers:layer_pooling[:option...]``: how many top layers of
the encoder train, 0 = frozen; which depths the heads read, every one or only the last;
and optionally how a user's head's L2 strength is set: ``fixed`` = ``user_l2``, ``cv`` =
chosen per fit by cross-validation from ``CV_GRID``; what the policy head trains on:
``policy-all`` or ``policy-half``; and ``lexical-<buckets>``, the width of the lexical
features, 0 for none; absent options keep the config's defaults):

1. held-out pairwise accuracy per user (split by prompt: held-out rankings never
   trained on) of the policy head, the judge head and the shared model alone, judged by
   the user's noise-free preference on the held-out pairs it decides (ties left out),
   with the number of such pairs;
2. cost: seconds of a turn's ``train_shared`` and ``train_user``, and of scoring a
   rollout batch of new completions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from bench.answers import TOPICS, compose
from bench.common import settle, table, write_result
from demo.preferences import FAMILIES, PREFERENCES, Labeler, Preference
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample, split_heldout
from trainer.reward.model import JUDGE, PersonalRewardModel


def users() -> dict[str, Preference]:
    """One pole of every family, and both poles of formality (a conflicting pair)."""
    chosen = {}
    for name, pref in PREFERENCES.items():
        if pref.family.name not in {p.family.name for p in chosen.values()}:
            chosen[name] = pref
    chosen.setdefault("casual", PREFERENCES["casual"])
    chosen.setdefault("formal", PREFERENCES["formal"])
    return chosen


def rankings(user: str, pref: Preference, n: int, candidates: int, noise: float,
             seed: int) -> list[PairExample]:
    """The user's pairs from ``n`` noisy rankings of ``candidates`` answers, preferred
    first."""
    rng = random.Random(seed)
    labeler = Labeler(user, pref, noise=noise)
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"user: {topic.question}" + (f" ({i // len(TOPICS)})" if i >= len(TOPICS)
                                              else "")
        texts = list(dict.fromkeys(compose(topic, rng) for _ in range(candidates)))
        order = labeler.rank(topic.question, texts, rng)
        pairs += [PairExample(user, prompt, texts[a], texts[b])
                  for k, a in enumerate(order) for b in order[k + 1:]]
    return pairs


def composed_question(prompt: str) -> str:
    """The question of a prompt ``rankings`` made ("user: <question> (<i>)")."""
    return prompt.removeprefix("user: ").split(" (")[0]


def decided(pref: Preference, pairs: list[PairExample],
            question_of: Callable[[str], str] = composed_question) -> list[PairExample]:
    """The pairs the noise-free preference decides, oriented its way; ``question_of``
    reads the user's question from a pair's prompt."""
    out = []
    for p in pairs:
        question = question_of(p.prompt)
        chosen, rejected = pref.score(question, p.chosen), pref.score(question, p.rejected)
        if chosen != rejected:
            out.append(p if chosen > rejected else
                       PairExample(p.user_id, p.prompt, p.rejected, p.chosen, p.weight))
    return out


CV_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The L2 strengths a ``cv`` setting's user heads choose from."""


def config(setting: str) -> RewardModelConfig:
    """The model of a ``tuned_layers:layer_pooling[:option...]`` setting; options: ``fixed``
    or ``cv`` (how a user head's L2 strength is set), ``policy-all`` or ``policy-half``
    (what the policy head trains on), ``lexical-<buckets>`` (the lexical features' width,
    0: none), ``lexweight-<w>`` (their block's relative norm), ``l2-<x>`` (every user
    head's L2 strength), ``length-<weight>`` (the log-length input's scale, 0: none),
    ``pool-<pooling>`` (how token states are pooled), ``span-<p>[+<p>]`` (the completion's
    own poolings, e.g. ``span-mean+max``), ``backbone=<dir>`` (another encoder);
    absent ones keep the config's default."""
    layers, pooling, *options = setting.split(":")
    cfg = RewardModelConfig(tuned_layers=int(layers), layer_pooling=pooling)
    for option in options:
        if option in ("fixed", "cv"):
            cfg = replace(cfg, user_l2_grid=CV_GRID if option == "cv" else ())
        elif option in ("policy-all", "policy-half"):
            cfg = replace(cfg, policy_head_data=option.removeprefix("policy-"))
        elif option.startswith("lexical-") and option.removeprefix("lexical-").isdigit():
            cfg = replace(cfg, lexical_dim=int(option.removeprefix("lexical-")))
        elif option.startswith("l2-"):
            cfg = replace(cfg, user_l2=float(option.removeprefix("l2-")), user_l2_grid=())
        elif option.startswith("lexweight-"):
            cfg = replace(cfg, lexical_weight=float(option.removeprefix("lexweight-")))
        elif option.startswith("length-"):
            cfg = replace(cfg, length_weight=float(option.removeprefix("length-")))
        elif option.startswith("span-"):
            cfg = replace(cfg, completion_pooling=tuple(option.removeprefix("span-").split("+")))
        elif option.startswith("pool-"):
            cfg = replace(cfg, pooling=option.removeprefix("pool-"))
        elif option.startswith("backbone="):
            cfg = replace(cfg, backbone=option.removeprefix("backbone="))
        else:
            raise ValueError(f"setting {setting!r}: unknown option {option!r} (fixed, cv, "
                             "policy-all, policy-half, lexical-<buckets>, lexweight-<w>, l2-<x>, "
                             "length-<weight>, pool-<pooling>, span-<p>[+<p>], "
                             "backbone=<dir>)")
    return cfg


def run(setting: str, data: dict[str, list[PairExample]], batch: int,
        ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    cfg = config(setting)
    rm = PersonalRewardModel(cfg)
    everyone = [p for pairs in data.values() for p in pairs]
    shared_s, user_s = [], []
    for user, pairs in data.items():  # a turn of each user, as the learner runs them
        shared_s.append(rm.train_shared(everyone).seconds)
        user_s.append(rm.train_user(user, pairs).seconds)
    rows = []
    for user, pairs in data.items():  # every user's heads refreshed on the final encoder
        m = rm.train_user(user, pairs)
        held = decided(PREFERENCES[user],
                       split_heldout(pairs, cfg.heldout_fraction, cfg.seed)[1])
        rows.append({"user": user, "family": PREFERENCES[user].family.name,
                     "kind": PREFERENCES[user].kind, "pairs": len(pairs),
                     "heldout_pairs": len(held), "turn_accuracy": m.heldout_accuracy,
                     "personal": rm.pairwise_accuracy(user, held),
                     "judge": rm.pairwise_accuracy(user, held, part=JUDGE),
                     "shared": rm.pairwise_accuracy(user, held, personal=False),
                     "user_l2": m.user_l2})
    rng = random.Random(1)
    start = time.perf_counter()
    rm.score(next(iter(data)), ["user: " + TOPICS[0].question] * batch,
             [compose(TOPICS[0], rng) + " " + str(i) for i in range(batch)])
    cost = {"train_shared_s": statistics.median(shared_s),
            "train_user_s": statistics.median(user_s),
            "score_batch_s": time.perf_counter() - start}
    return rows, cost


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rankings", type=int, default=40, help="rankings per user")
    p.add_argument("--candidates", type=int, default=4, help="answers per ranking")
    p.add_argument("--noise", type=float, default=0.3, help="labeler Gumbel noise scale")
    p.add_argument("--data-seed", type=int, default=0,
                   help="offset of the users' ranking seeds (another draw of the same users)")
    p.add_argument("--settings", default="0:all,2:all,0:last",
                   help="tuned_layers:layer_pooling[:option...] settings compared side by side")
    p.add_argument("--batch", type=int, default=8, help="completions per score call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    torch.set_num_threads(args.threads)
    prefs = users()
    data = {u: rankings(u, pref, args.rankings, args.candidates, args.noise,
                        seed=args.data_seed + i)
            for i, (u, pref) in enumerate(prefs.items())}
    results: dict[str, Any] = {}
    for setting in args.settings.split(","):
        rows, cost = run(setting, data, args.batch)
        results[setting] = {"users": rows, "cost": cost}
    settings = list(results)
    head = ["user", "family", "kind", "decided held-out pairs"] + [
        f"{s}: {part}" for s in settings
        for part in ("personal", "judge", "shared")]
    body = []
    for i, user in enumerate(data):
        row = results[settings[0]]["users"][i]
        body.append([user, row["family"], row["kind"], row["heldout_pairs"]] + [
            _f(results[s]["users"][i][part]) for s in settings
            for part in ("personal", "judge", "shared")])
    body.append(["mean", "", "", sum(r[3] for r in body)] + [
        _f(statistics.mean(u[part] for u in results[s]["users"])) for s in settings
        for part in ("personal", "judge", "shared")])
    print(table(head, body))
    print(table(["setting", "train_shared s", "train_user s", f"score {args.batch} s"],
                [[s, results[s]["cost"]["train_shared_s"], results[s]["cost"]["train_user_s"],
                  results[s]["cost"]["score_batch_s"]] for s in settings]))
    write_result("reward_model", vars(args) | {"families": len(FAMILIES)}, results,
                 args.out or None)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
