"""Diversified candidates: rankings-to-target with and without a temperature spread.

    python -m bench.diversity                    # about 20 min on 2 cores
    python -m bench.diversity --markdown bench/results/diversity.json   # its tables as markdown

Candidates come from the real model (SmolLM2-135M-Instruct by default) through the
server's own engine (``services.server.engine.VllmEngine``), with each candidate's
temperature planned by the server's own rule (``services.server.diversity``): for every
``--spreads`` setting (0 = off), ``--rankings`` ranked sets of ``--candidates`` answers
per seed, each at a training prompt (the same prompts in every setting; only the
temperatures differ). A common held-out set, split by
ranking group and by prompt (held-out prompts are never trained on), holds one group per
held-out prompt and setting, so no setting is judged on its own kind of answers only.

For each preference family of ``--families`` (one pole each, ``demo.preferences``), a
simulated user ranks every set with the library's Bradley-Terry label noise (``--noise``).
The personal reward model (``trainer.reward``, the learner's flow for one user: the
shared part, then the user's heads) trains on the first k rankings, k in ``--ks``, and
its policy head is judged on the held-out pairs the user's noise-free preference decides
(ties left out). Reported per family, setting and k: accuracy pooled over seeds with a
95% Wilson interval and the number of held-out pairs; rankings-to-target, the smallest k
whose accuracy reaches each of ``--targets``; and how many training pairs the
noise-free preference decides (the information a ranking carries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.answers import TOPICS
from bench.common import DEFAULT_MODEL, PROMPTS, REPO, settle, table, write_result
from demo.preferences import PREFERENCES, Labeler, Preference
from demo.prompts import PROMPTS as DEMO_PROMPTS
from demo.stats import wilson
from services.server.diversity import candidate_temperatures
from trainer.data.chat import prompt_text
from trainer.reward.config import RewardModelConfig
from trainer.reward.data import PairExample
from trainer.reward.model import PersonalRewardModel

FAMILY_POLES = {"length": "concise", "examples": "examples", "warmth": "warm",
                "vocabulary": "technical", "certainty": "hedged", "address": "second_person",
                "formality": "formal", "summary": "summary", "layout": "bullets",
                "questions": "questions", "topic": "on_topic"}
"""The pole each family's simulated user prefers."""


@dataclass(frozen=True)
class Group:
    """One ranked set: a prompt and its candidate answers (duplicates dropped)."""

    question: str
    texts: tuple[str, ...]
    temperatures: tuple[float, ...]


def prompt_pool() -> list[str]:
    """Every prompt the benchmarks know, once, the demo's held-out ones first."""
    return list(dict.fromkeys([*DEMO_PROMPTS, *(t.question for t in TOPICS), *PROMPTS]))


# --- 1. candidates from the real model -----------------------------------------------


async def generate_groups(engine: Any, jobs: Sequence[tuple[str, float]],
                          args: argparse.Namespace) -> tuple[list[Group], int]:
    """One group per (question, spread) job, all candidates in flight at once; and
    the tokens sampled."""
    from services.server.engine import Sampling
    from services.server.validation import Message

    async def one(request_id: str, prompt_ids: list[int], sampling: Sampling
                  ) -> tuple[str, int]:
        parts = [d async for d in engine.stream(request_id, prompt_ids, sampling, None)]
        return "".join(d.text for d in parts).strip(), sum(len(d.token_ids) for d in parts)

    tasks, plans = [], []
    for j, (question, spread) in enumerate(jobs):
        ids = engine.encode_chat([Message("user", question)])
        temps = candidate_temperatures(args.temperature, args.candidates, spread,
                                       args.max_temperature)
        plans.append(temps)
        # no per-request seed: vLLM's CPU sampler fails on seeded requests whose prefill
        # is split across steps (its generator has no offset to rewind)
        tasks.append([one(f"g{j}-{i}", ids, Sampling(args.max_tokens, t, 1.0, None))
                      for i, t in enumerate(temps)])
    flat = await asyncio.gather(*(t for group in tasks for t in group))
    groups, at = [], 0
    for (question, _spread), temps in zip(jobs, plans, strict=True):
        texts = [text for text, _tokens in flat[at:at + len(temps)]]
        at += len(temps)
        keep = {t: temp for t, temp in zip(texts, temps, strict=True) if t}
        groups.append(Group(question, tuple(keep), tuple(keep.values())))
    return groups, sum(tokens for _text, tokens in flat)


# --- 2. labels and held-out pairs ----------------------------------------------------


def ranked_pairs(user: str, labeler: Labeler, groups: Sequence[Group],
                 rng: random.Random) -> list[list[PairExample]]:
    """Each group's N(N-1)/2 pairs from the labeler's noisy ranking, preferred first."""
    out = []
    for g in groups:
        prompt = prompt_text([{"role": "user", "content": g.question}])
        order = labeler.rank(g.question, g.texts, rng)
        out.append([PairExample(user, prompt, g.texts[a], g.texts[b])
                    for k, a in enumerate(order) for b in order[k + 1:]])
    return out


def decided_pairs(user: str, pref: Preference, groups: Sequence[Group]) -> list[PairExample]:
    """Every pair of every group the noise-free preference decides, oriented its way."""
    out = []
    for g in groups:
        prompt = prompt_text([{"role": "user", "content": g.question}])
        for a in range(len(g.texts)):
            for b in range(a + 1, len(g.texts)):
                sa, sb = (pref.score(g.question, g.texts[x]) for x in (a, b))
                if abs(sa - sb) > 1e-9:
                    hi, lo = (a, b) if sa > sb else (b, a)
                    out.append(PairExample(user, prompt, g.texts[hi], g.texts[lo]))
    return out


def share_decided(pref: Preference, groups: Sequence[Group]) -> tuple[int, int]:
    """(pairs the noise-free preference decides, all pairs) over ``groups``."""
    total = sum(len(g.texts) * (len(g.texts) - 1) // 2 for g in groups)
    return len(decided_pairs("x", pref, groups)), total


# --- 3. the reward model on the first k rankings --------------------------------------


def accuracy_after(encoder: Any, cfg: RewardModelConfig, user: str,
                   train: list[list[PairExample]], held: list[PairExample]) -> int:
    """Held-out pairs ranked right by the user's policy head after training on ``train``."""
    rm = PersonalRewardModel(cfg, encoder=encoder)
    pairs = [p for group in train for p in group]
    rm.train_shared(pairs)
    rm.train_user(user, pairs)
    return round(rm.pairwise_accuracy(user, held) * len(held)) if held else 0


# --- the run ---------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--spreads", default="0,1.0", help="candidate_temperature_spread settings")
    p.add_argument("--temperature", type=float, default=0.7, help="requested temperature")
    p.add_argument("--max-temperature", type=float, default=2.0)
    p.add_argument("--candidates", type=int, default=4, help="answers per ranking")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ks", default="5,10,20,40", help="training rankings per user")
    p.add_argument("--heldout-prompts", type=int, default=12)
    p.add_argument("--families", default="length,examples,warmth,vocabulary,certainty,address")
    p.add_argument("--noise", type=float, default=0.3, help="labeler Gumbel noise scale")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--targets", default="0.75,0.85", help="held-out accuracy targets")
    p.add_argument("--tuned-layers", type=int, default=0,
                   help="reward encoder layers trained (0: frozen, embeddings cached)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    p.add_argument("--markdown", default="", metavar="JSON",
                   help="print a result file's tables as markdown and exit")
    return p.parse_args()


async def sample_all(args: argparse.Namespace, spreads: list[float], rankings: int
                     ) -> tuple[dict[tuple[int, float], list[Group]], list[list[Group]], float]:
    """Training groups per (seed, spread) and held-out groups per seed; tokens/s."""
    from services.server.config import EngineConfig
    from services.server.engine import VllmEngine

    engine = VllmEngine(EngineConfig(model=str(REPO / args.model), dtype="bfloat16",
                                     max_model_len=1024, max_num_seqs=64))
    pool = prompt_pool()
    held_q, train_q = pool[:args.heldout_prompts], pool[args.heldout_prompts:]
    train: dict[tuple[int, float], list[Group]] = {}
    held: list[list[Group]] = []
    start, tokens = time.perf_counter(), 0
    try:
        for seed in range(args.seeds):
            jobs = [(train_q[j % len(train_q)], s) for s in spreads for j in range(rankings)]
            jobs += [(q, s) for q in held_q for s in spreads]
            groups, n_tokens = await generate_groups(engine, jobs, args)
            for i, s in enumerate(spreads):
                train[(seed, s)] = groups[i * rankings:(i + 1) * rankings]
            held.append(groups[len(spreads) * rankings:])
            tokens += n_tokens
            print(f"seed {seed}: {len(jobs)} groups sampled, "
                  f"{time.perf_counter() - start:.0f} s so far", flush=True)
    finally:
        engine.shutdown()
    return train, held, tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    settle()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    spreads = [float(x) for x in args.spreads.split(",")]
    ks = sorted(int(x) for x in args.ks.split(","))
    targets = [float(x) for x in args.targets.split(",")]
    families = args.families.split(",")
    started = time.perf_counter()
    train, held, tps = asyncio.run(sample_all(args, spreads, ks[-1]))
    sampled_s = time.perf_counter() - started

    cfg = RewardModelConfig(tuned_layers=args.tuned_layers, heldout_fraction=0.0)
    encoder = PersonalRewardModel(cfg).encoder
    rows: list[dict[str, Any]] = []
    for family in families:
        pref = PREFERENCES[FAMILY_POLES[family]]
        user = f"user-{family}"
        for s in spreads:
            row: dict[str, Any] = {"family": family, "preference": pref.name,
                                   "kind": pref.kind, "spread": s}
            decided, total, correct, n = 0, 0, dict.fromkeys(ks, 0), 0
            for seed in range(args.seeds):
                held_pairs = decided_pairs(user, pref, held[seed])
                n += len(held_pairs)
                rng = random.Random(f"{seed}/{family}/{s}")
                labeled = ranked_pairs(user, Labeler(user, pref, noise=args.noise),
                                       train[(seed, s)], rng)
                d, t = share_decided(pref, train[(seed, s)])
                decided, total = decided + d, total + t
                for k in ks:
                    correct[k] += accuracy_after(encoder, cfg, user, labeled[:k], held_pairs)
            row.update(heldout_pairs=n, train_pairs=total,
                       train_pairs_decided=decided / total if total else 0.0)
            for k in ks:
                low, high = wilson(correct[k], n) if n else (0.0, 1.0)
                row[f"k={k}"] = {"accuracy": correct[k] / n if n else None,
                                 "low": low, "high": high}
            row["rankings_to_target"] = {
                str(t): next((k for k in ks if n and correct[k] / n >= t), None)
                for t in targets}
            rows.append(row)
            print(f"{family} spread {s}: " + ", ".join(
                f"k={k} {row[f'k={k}']['accuracy']:.2f}" for k in ks if n), flush=True)
    report(rows, spreads, ks, targets)
    temps = {str(s): candidate_temperatures(args.temperature, args.candidates, s,
                                            args.max_temperature) for s in spreads}
    write_result("diversity", vars(args) | {"candidate_temperatures": temps}, {
        "rows": rows, "summary": summary(rows, spreads, ks),
        "cost": {"sampling_s": sampled_s, "sampled_tokens_per_s": tps,
                 "total_s": time.perf_counter() - started},
        "distinct_answers_per_group": {
            str(s): sum(len(g.texts) for seed in range(args.seeds) for g in train[(seed, s)])
            / sum(len(train[(seed, s)]) for seed in range(args.seeds)) for s in spreads}},
        args.out or None)


def summary(rows: list[dict[str, Any]], spreads: list[float], ks: list[int]
            ) -> dict[str, dict[str, float | None]]:
    """Per setting and k, the families' mean held-out accuracy."""
    out: dict[str, dict[str, float | None]] = {}
    for s in spreads:
        out[str(s)] = {}
        for k in ks:
            found = [r[f"k={k}"]["accuracy"] for r in rows
                     if r["spread"] == s and r[f"k={k}"]["accuracy"] is not None]
            out[str(s)][f"k={k}"] = sum(found) / len(found) if found else None
    return out


def report(rows: list[dict[str, Any]], spreads: list[float], ks: list[int],
           targets: list[float]) -> None:
    def cell(r: dict[str, Any], k: int) -> str:
        a = r[f"k={k}"]
        return "-" if a["accuracy"] is None else (
            f"{a['accuracy']:.2f} [{a['low']:.2f}, {a['high']:.2f}]")
    head = ["family", "kind", "spread", "held-out pairs", "decided train pairs"] + [
        f"k={k}" for k in ks] + [f"to {t:.2f}" for t in targets]
    body = [[r["family"], r["kind"], r["spread"], r["heldout_pairs"],
             f"{r['train_pairs_decided']:.2f}"] + [cell(r, k) for k in ks] + [
                 r["rankings_to_target"][str(t)] or f">{ks[-1]}" for t in targets]
            for r in rows]
    print(table(head, body))
    means = summary(rows, spreads, ks)
    print(table(["spread"] + [f"mean k={k}" for k in ks],
                [[s] + [_f(means[str(s)][f"k={k}"]) for k in ks] for s in spreads]))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """A result file's per-family table and summary as markdown (for docs/benchmarks.md)."""
    cfg = result["settings"]
    ks = sorted(int(x) for x in cfg["ks"].split(","))
    targets = [float(x) for x in cfg["targets"].split(",")]
    spreads = [float(x) for x in cfg["spreads"].split(",")]
    lines = ["| family (kind) | spread | held-out pairs | decided train pairs | "
             + " | ".join(f"k={k}" for k in ks) + " | "
             + " | ".join(f"to {t:.2f}" for t in targets) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---" for _ in ks) + " | "
             + " | ".join("---:" for _ in targets) + " |"]
    for r in result["rows"]:
        cells = []
        for k in ks:
            a = r[f"k={k}"]
            cells.append("-" if a["accuracy"] is None else
                         f"{a['accuracy']:.2f} [{a['low']:.2f}, {a['high']:.2f}]")
        to = [str(r["rankings_to_target"][str(t)] or f">{ks[-1]}") for t in targets]
        lines.append(f"| {r['family']} ({r['kind']}) | {r['spread']:g} | {r['heldout_pairs']} "
                     f"| {r['train_pairs_decided']:.2f} | " + " | ".join(cells) + " | "
                     + " | ".join(to) + " |")
    lines += ["", "| spread | temperatures of 4 candidates | distinct answers per ranking | "
              + " | ".join(f"mean accuracy k={k}" for k in ks) + " |",
              "| ---: | --- | ---: | " + " | ".join("---:" for _ in ks) + " |"]
    for s in spreads:
        temps = ", ".join(f"{t:g}" for t in cfg["candidate_temperatures"][str(s)])
        means = result["summary"][str(s)]
        lines.append(f"| {s:g} | {temps} | {result['distinct_answers_per_group'][str(s)]:.2f} | "
                     + " | ".join(_f(means[f"k={k}"]) for k in ks) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
