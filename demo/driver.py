"""Simulated users talking to the service through the public gRPC API only.

Each user asks prompts, rates what comes back (thumbs on one answer, or a ranking of
2-4 candidates) with its labelers' noisy judgement, and watches its own status. An
evaluator measures, whenever a user is served a new adapter version, how often that
version's answers beat the base model's on held-out prompts under the user's hidden
preference (the win rate, with its interval) and under the library's preferences
independent of it (leakage), and checks that every other user's answers to a fixed
prompt and seed stayed byte-identical (``demo.evaluation``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from demo.evaluation import Answers, IdentityLedger, Leak, Probe, compare, leakage
from demo.prompts import eval_prompts, feedback_prompts
from demo.stats import Tally
from demo.users import SimUser
from services.client.sdk import AssistantClient, Candidate

log = logging.getLogger("personalize.demo")
CANDIDATES_PER_CALL = 4
"""Most candidates one Generate call may ask for (the server's default limit)."""


@dataclass(frozen=True)
class DriveConfig:
    max_tokens: int = 32
    """Answer length limit of every request (and of the trainer's samples)."""
    temperature: float = 1.0
    """Sampling temperature of the answers users rate."""
    thumbs_fraction: float = 0.3
    """Share of events that are a thumbs on one answer (the rest rank 2-4 candidates)."""
    pause_s: float = 6.0
    """Pause of each user between two feedback events."""
    eval_samples: int = 6
    """Seeded samples per held-out prompt when measuring a win rate."""
    eval_temperature: float = 0.7
    probe_samples: int = 2
    """Seeded answers to the first held-out prompt in each byte-identity probe."""
    probe_seed: int = 271828
    poll_s: float = 5.0
    """How often the users' status is read."""
    max_backlog: int = 16
    """Feedback events per labeler a user lets the trainer fall behind before waiting
    for it, as a person would wait to see an effect; keeps the CPU for training on a
    small host."""
    seed: int = 0


class TrafficGate:
    """The users' requests run together; a probe runs alone. vLLM's CPU numerics depend on
    how an engine step's batch is composed (how prompts are split across steps, the
    shapes of its matrix products), so the same seeded request can differ by a token when
    other requests share its steps. A byte-identity probe therefore waits for the users'
    requests in flight to finish and holds new ones back: what it compares is then the
    effect of other users' adapters alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._alone = False

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._alone = True
            self._cond.wait_for(lambda: self._in_flight == 0)
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


@dataclass
class Point:
    """One sample of a user's curves."""

    t: float
    feedback: int
    rankings: int
    version: str
    rm_accuracy: float
    rm_accuracy_shared: float
    win_rate: float
    win_lo: float
    win_hi: float


@dataclass
class UserState:
    user: SimUser
    feedback: int = 0
    """Feedback events acknowledged by the server."""
    rankings: int = 0
    """Of which rankings (the rest are thumbs)."""
    errors: int = 0
    version: str = ""
    rm_accuracy: float = math.nan
    rm_accuracy_shared: float = math.nan
    win: Tally = field(default_factory=Tally)
    """Own preference: the served version vs the base model on held-out prompts."""
    leaks: list[Leak] = field(default_factory=list)
    """The served version under the library's preferences independent of the user's."""
    identity: IdentityLedger = field(default_factory=IdentityLedger)
    """This user's probe answers, compared whenever another user's version changed."""
    simulated: dict[str, Tally] = field(default_factory=dict)
    """Each served version's simulated win rate vs base (``win`` when it was measured)."""
    online: dict[str, Tally] = field(default_factory=dict)
    """Each version's win rate vs base judged online by the trainer: the user's own
    rankings of interleaved comparison candidates while it was served (ListVersions'
    and GetUserStatus' online_vs_base)."""

    @property
    def online_check(self) -> tuple[str, Tally, Tally] | None:
        """(version, simulated, online) of the newest version measured both ways."""
        both = [v for v, t in self.online.items() if t.n and v in self.simulated]
        if not both:
            return None
        version = max(both, key=lambda v: int(v[1:]))
        return version, self.simulated[version], self.online[version]
    best: Tally = field(default_factory=Tally)
    feedback_at_best: int = 0
    """Feedback events sent when the best win rate so far was first measured."""
    decision: str = ""
    backlog: int = 0
    """Feedback events accepted by the server that the trainer has not trained on."""
    labelers: list[tuple[str, float, bool]] = field(default_factory=list)
    history: list[Point] = field(default_factory=list)

    @property
    def win_rate(self) -> float:
        return self.win.rate


class Simulation:
    """Runs the users and the evaluator until ``stop()``; ``states`` is read by views."""

    def __init__(self, client: AssistantClient, users: list[SimUser], cfg: DriveConfig,
                 on_event: Callable[[str], None] = lambda _: None) -> None:
        self._client = client
        self._cfg = cfg
        self.on_event = on_event
        self.states = {u.user_id: UserState(u) for u in users}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._base: dict[tuple[str, int], str] = {}
        self._traffic = TrafficGate()
        self.started = time.monotonic()
        self.thresholds: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        base = self._answers(next(iter(self.states)), base_model=True)
        self._base = {k: c.text for k, c in base.items()}
        for state in self.states.values():
            # thumbs up means "better than the base model's median answer", for this user
            pref = state.user.preference
            scores = sorted(pref.score(p, t) for (p, _), t in self._base.items())
            self.thresholds[state.user.user_id] = scores[len(scores) // 2]
            state.identity.observe(self.probe(state.user.user_id))
        self.started = time.monotonic()
        for i, state in enumerate(self.states.values()):
            self._spawn(self._feedback_loop, state, random.Random(self._cfg.seed * 1000 + i))
        self._spawn(self._watch_loop)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._cfg.max_tokens)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    # -- feedback -------------------------------------------------------------------------
    def _feedback_loop(self, state: UserState, rng: random.Random) -> None:
        prompts = feedback_prompts()
        while not self._stop.is_set():
            if state.backlog >= self._cfg.max_backlog * len(state.user.labelers):
                self._stop.wait(1.0)
                continue
            try:
                self._one_event(state, rng.choice(prompts), rng)
            except grpc.RpcError as exc:
                state.errors += 1
                self.on_event(f"{state.user.user_id}: {exc.code().name} {exc.details()}")
            self._stop.wait(self._cfg.pause_s * (0.5 + rng.random()))

    def _one_event(self, state: UserState, prompt: str, rng: random.Random) -> None:
        user, cfg = state.user, self._cfg
        thumbs = rng.random() < cfg.thumbs_fraction
        n = 1 if thumbs else rng.choice((2, 3, 4))
        with self._traffic.request():
            answers = self._client.complete(user.user_id, prompt, num_candidates=n,
                                            max_tokens=cfg.max_tokens,
                                            temperature=cfg.temperature)
        for labeler in user.labelers:
            if thumbs:
                up = labeler.thumbs_up(prompt, answers[0].text, self.thresholds[user.user_id],
                                       rng)
                self._client.thumbs(user.user_id, answers[0].response_id, up,
                                    labeler_id=labeler.labeler_id)
            else:
                order = labeler.rank(prompt, [a.text for a in answers], rng)
                self._client.rank(user.user_id, [answers[i].response_id for i in order],
                                  labeler_id=labeler.labeler_id)
        state.feedback += 1
        state.rankings += not thumbs
        state.backlog += len(user.labelers)

    # -- status and evaluation ------------------------------------------------------------
    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            for state in self.states.values():
                if self._stop.is_set():
                    return
                try:
                    self._refresh(state)
                except grpc.RpcError as exc:
                    self.on_event(f"status of {state.user.user_id}: {exc.code().name}")
                except Exception as exc:  # shown in the view; the demo goes on
                    log.exception("evaluating %s", state.user.user_id)
                    self.on_event(f"evaluating {state.user.user_id} failed: {exc!r}")
            self._stop.wait(self._cfg.poll_s)

    def _refresh(self, state: UserState) -> None:
        status = self._client.status(state.user.user_id)
        if status.reward_model_heldout_pairs:  # else the accuracies were not measured
            state.rm_accuracy = status.reward_model_accuracy
            state.rm_accuracy_shared = status.reward_model_shared_accuracy
        state.decision = status.last_publish_decision
        state.backlog = max(0, status.feedback_accepted - status.feedback_events_trained)
        state.labelers = [(s.labeler_id, s.agreement, s.flagged) for s in status.labelers]
        if status.adapter_version and status.adapter_version != state.version:
            self._evaluate(state, status.adapter_version)
            self._check_identity(state)
        self._read_online(state, status.online_vs_base)
        lo, hi = state.win.interval()
        state.history.append(Point(self.elapsed(), state.feedback, state.rankings,
                                   state.version, state.rm_accuracy, state.rm_accuracy_shared,
                                   state.win.rate, lo, hi))

    def _read_online(self, state: UserState, current: Any) -> None:
        """The trainer's online tallies: every version's from ListVersions (an operator
        call; the demo's stack runs without auth), else the served one's from the
        status. A tally only grows while its version is served; the largest is kept."""
        found = [current]
        with contextlib.suppress(grpc.RpcError):  # e.g. auth on: the status has the
            found += [v.online_vs_base for v in  # served version's
                      self._client.list_versions(state.user.user_id).versions]
        for w in found:
            tally = Tally(w.wins, w.ties, w.losses)
            if w.version and tally.n >= state.online.get(w.version, Tally()).n:
                state.online[w.version] = tally

    def _evaluate(self, state: UserState, version: str) -> None:
        answers = self._answers(state.user.user_id, base_model=False)
        served = {a.adapter_version for a in answers.values()} - {""}
        state.version = max(served, key=lambda v: int(v[1:])) if served else version
        texts: Answers = {k: a.text for k, a in answers.items()}
        pref = state.user.preference
        state.win = state.simulated[state.version] = compare(pref, texts, self._base)
        state.leaks = leakage(pref, texts, self._base)
        if state.win.rate > state.best.rate:
            state.best, state.feedback_at_best = state.win, state.feedback
        self.on_event(f"{state.user.user_id} now served {state.version}: win rate "
                      f"{state.win.rate:.0%} vs base (n={state.win.n})")

    def _check_identity(self, changed: UserState) -> None:
        """Every other user's probe answers must be what they were before ``changed``'s
        new version came in, unless their own served version changed meanwhile."""
        for state in self.states.values():
            if state is changed:
                continue
            outcome = state.identity.observe(self.probe(state.user.user_id))
            if outcome == "mismatch":
                self.on_event(f"{state.user.user_id}'s answers changed when "
                              f"{changed.user.user_id} got {changed.version}")

    def probe(self, user_id: str) -> Probe:
        """The user's answers to the first held-out prompt with fixed seeds, one request
        at a time with nothing else in the engine: the candidates of one call run
        together, and whether they share their first engine step depends on timing."""
        cfg = self._cfg
        cands = []
        with self._traffic.alone():  # batch-composition effects are not leakage
            for i in range(cfg.probe_samples):
                cands += self._client.complete(user_id, eval_prompts()[0], num_candidates=1,
                                               max_tokens=cfg.max_tokens,
                                               temperature=cfg.eval_temperature,
                                               seed=cfg.probe_seed + i)
        return Probe(",".join(sorted({c.adapter_version for c in cands})),
                     tuple(c.text for c in cands))

    def _answers(self, user_id: str, base_model: bool) -> dict[tuple[str, int], Candidate]:
        """Seeded answers to every held-out prompt, by (prompt, sample); samples are asked
        for at most ``CANDIDATES_PER_CALL`` at a time (the server's candidate limit)."""
        cfg = self._cfg
        calls = [(p, i, first) for i, p in enumerate(eval_prompts())
                 for first in range(0, cfg.eval_samples, CANDIDATES_PER_CALL)]

        def one(call: tuple[str, int, int]) -> list[Candidate]:
            prompt, i, first = call
            n = min(CANDIDATES_PER_CALL, cfg.eval_samples - first)
            # candidate c of a call is sampled with seed + c: sample first + c overall
            return self._client.complete(
                user_id, prompt, num_candidates=n, max_tokens=cfg.max_tokens,
                temperature=cfg.eval_temperature, seed=(cfg.seed * 7919 + i) * 1000 + first,
                base_model=base_model)

        with ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(one, calls))
        return {(p, first + c.index): c for (p, _, first), cands in zip(calls, results, strict=True)
                for c in cands}
