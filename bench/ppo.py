"""One PPO update: ours (trainer/ppo/trainer.py) vs TRL's PPOTrainer, same model, batch, lengths.

    python -m bench.ppo          # SmolLM2-135M: 3 x 11 paired updates, about 45-55 min
    python -m bench.ppo --updates 0 --full-value-updates 0   # ours: float32 vs bf16 only
    python -m bench.ppo --model .cache/test-models/tiny-llama --updates 6 \
        --full-value-updates 0   # quick

TRL dropped PPO after 1.12 (``trl.experimental.ppo``, removed in 1.13), so the
``bench`` extra pins trl==1.12.0. Both sides run on the CPU in fp32 with the same
settings: a LoRA policy (r=8 on q_proj/v_proj) whose reference is the same model
with the adapter disabled, ``--batch`` prompts per rollout, ``--mini-batch``
sequences per gradient step, ``--epochs`` PPO epochs, exactly ``--tokens`` sampled
tokens per completion (ours: EOS suppressed; TRL: no stop token, so its generation
never ends early), the same reward model: the base model with a scalar head
(``AutoModelForSequenceClassification``, as TRL requires), and ``--threads`` torch
threads.

What differs is each implementation's design, and is what is measured: TRL keeps
a separate value model (a second copy of the base model with a head, fully trained,
its default) and takes the rollout log-probabilities from ``generate``'s scores;
ours puts a linear value head on the policy's own last hidden state (one forward
gives log-probs and values) and recomputes rollout log-probabilities with a forward
pass. The headline comparison is like for like: TRL's value backbone frozen (only its
head trains, as ours is a head on the policy), the same LoRA, the same tokens; the
second keeps TRL's default (its whole value model trained). In each, the two run in
one process and alternate update by update (TRL's callback runs one of ours between
its updates, outside TRL's timing), so a busy host slows both alike; each side's
first update is an untimed warm-up, then ``--updates`` (``--full-value-updates``)
timed pairs. The ratio ours/TRL of each pair is reported with the median and its
distribution-free 95% interval (order statistics). Then ours in float32 against ours
with the product's default dtype ("auto": a bf16 base model where the CPU computes bf16
natively), ``--dtype-updates`` interleaved pairs after a warm-up each. ``--minilm``
also times ours with the production reward model (frozen MiniLM + heads), alone.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DEFAULT_MODEL,
    PROMPTS,
    Deadline,
    median,
    median_interval,
    settle,
    table,
    write_result,
)

ChatPrompt = list[dict[str, str]]


def chats(n: int) -> list[ChatPrompt]:
    return [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]


def load_tokenizer(model: str):  # type: ignore[no-untyped-def]
    """The tokenizer both sides use; its pad token must differ from EOS (TRL masks by it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = tok.convert_ids_to_tokens(0)
    tok.padding_side = "left"
    return tok


def reward_model(model: str, pad_id: int):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1,
                                                            dtype=torch.float32)
    rm.config.pad_token_id = pad_id
    rm.requires_grad_(False)
    return rm.eval()


# --- ours ----------------------------------------------------------------------------------


class Ours:
    """Our PPOTrainer on a PolicyPool, ready to run one update at a time."""

    def __init__(self, args: argparse.Namespace, minilm: bool, dtype: str = "float32") -> None:
        from trainer.ppo.policies import PolicyPool
        from trainer.ppo.trainer import PPOConfig, PPOTrainer

        cfg = PPOConfig(batch_size=args.batch, mini_batch_size=args.mini_batch,
                        ppo_epochs=args.epochs, max_new_tokens=args.tokens, lr=1e-4,
                        temperature=1.0, max_resident_users=1,
                        dtype=dtype)  # float32 like TRL's side; the product's "auto" below
        self.pool = PolicyPool.from_pretrained(args.model, cfg)
        tok = load_tokenizer(args.model)
        self.pool.tokenizer = tok
        self.ppo = PPOTrainer(self.pool, cfg)
        self.ppo.generation.min_new_tokens = args.tokens  # EOS suppressed: full completions
        self.prompts = chats(args.batch)
        self.lengths: list[float] = []
        if minilm:
            from trainer.reward.model import PersonalRewardModel, RewardModelConfig

            prm = PersonalRewardModel(RewardModelConfig())

            def reward_fn(prompts: list[str], completions: list[str]) -> torch.Tensor:
                return prm.score("bench", prompts, completions)
        else:
            rm = reward_model(args.model, tok.pad_token_id)

            @torch.no_grad()
            def reward_fn(prompts: list[str], completions: list[str]) -> torch.Tensor:
                batch = tok([p + c for p, c in zip(prompts, completions, strict=True)],
                            return_tensors="pt", padding=True, padding_side="right",
                            add_special_tokens=False)
                return rm(**batch).logits[:, 0]
        self.reward_fn = reward_fn

    def update(self) -> float:
        """One PPO iteration (rollout, scores, evaluation, GAE, epochs); its seconds."""
        start = time.perf_counter()
        run = self.ppo.train_user("bench-user", self.prompts, self.reward_fn, steps=1)
        seconds = time.perf_counter() - start
        self.lengths.append(run.history[-1].response_length)
        return seconds

    def result(self, times: list[float]) -> dict[str, Any]:
        trainable = sum(p.numel() for p in self.pool.trainable_parameters("bench-user"))
        return {"update_s": times, "response_length": median(self.lengths),
                "trainable_params": trainable}


def run_ours(args: argparse.Namespace, minilm: bool) -> dict[str, Any]:
    ours = Ours(args, minilm)
    times = [ours.update() for _ in range(args.updates + 1)][1:]  # the first is the warm-up
    return ours.result(times)


# --- TRL -----------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, frozen_value: bool,
            between: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """TRL's PPOTrainer.train() for ``updates`` + 1 updates; ``between()`` runs after each
    update, outside the timed span (to interleave the other implementation)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = load_tokenizer(args.model)
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1,
                                                               dtype=torch.float32)
    for m in (policy, value):
        m.config.pad_token_id = tok.pad_token_id
    if frozen_value:
        value.requires_grad_(False)
        value.score.requires_grad_(True)
    rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in chats(args.batch)]
    data = Dataset.from_dict({"input_ids": [tok(r, add_special_tokens=False)["input_ids"]
                                            for r in rendered]})
    steps: list[float] = []
    mark = [0.0]

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            mark[0] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            steps.append(time.perf_counter() - mark[0])
            between()
            mark[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, num_mini_batches=args.batch // args.mini_batch,
            num_ppo_epochs=args.epochs, response_length=args.tokens,
            total_episodes=args.batch * (args.updates + 1),
            local_rollout_forward_batch_size=args.batch, learning_rate=1e-4, kl_coef=0.05,
            cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
            temperature=1.0, stop_token=None, missing_eos_penalty=None, whiten_rewards=False,
            num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=1,
            use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=0,
            lr_scheduler_type="constant", dataloader_num_workers=0)
        trainer = PPOTrainer(
            args=config, processing_class=tok, model=policy, ref_model=None,
            reward_model=reward_model(args.model, tok.pad_token_id), train_dataset=data,
            value_model=value, callbacks=[Clock()],
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                   lora_dropout=0.0, task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
    # no stop token: every completion runs to response_length (a sampled pad id would end it)
    return {"update_s": steps[1:], "response_length": float(args.tokens),
            "trainable_params": trainable}


def interleaved(args: argparse.Namespace, ours: Ours, frozen_value: bool, updates: int
                ) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """TRL and ours alternate update by update (each of ours right after one of TRL's,
    outside TRL's timing), so a busy host slows both alike: (ours, TRL, paired ratios)."""
    run_args = argparse.Namespace(**{**vars(args), "updates": updates})
    ours_times: list[float] = []
    trl = run_trl(run_args, frozen_value, between=lambda: ours_times.append(ours.update()))
    mine = ours.result(ours_times[1:])  # the first ran after TRL's untimed warm-up
    return mine, trl, [o / t for o, t in zip(mine["update_s"], trl["update_s"], strict=False)]


def compare_dtypes(args: argparse.Namespace, fp32: Ours) -> dict[str, Any]:
    """Ours with a float32 base model vs the product's "auto" dtype, alternating update by
    update (which goes first alternates too), after one untimed warm-up each."""
    from trainer.ppo.policies import base_dtype

    auto = Ours(args, minilm=False, dtype="auto")
    auto.update()
    times: dict[str, list[float]] = {"float32": [], "auto": []}
    for i in range(args.dtype_updates):
        order = (("float32", fp32), ("auto", auto))
        for name, side in order if i % 2 == 0 else order[::-1]:
            times[name].append(side.update())
    paired = [a / f for a, f in zip(times["auto"], times["float32"], strict=True)]
    lo, hi = median_interval(paired)
    dtype = str(base_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    result = {"float32": {**fp32.result(times["float32"]), "dtype": "float32"},
              "auto": {**auto.result(times["auto"]), "dtype": dtype},
              "paired_ratios": paired, "ratio_median": median(paired), "ratio_lo": lo,
              "ratio_hi": hi}
    del auto
    gc.collect()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch", type=int, default=8, help="prompts per rollout")
    p.add_argument("--mini-batch", type=int, default=4, help="sequences per gradient step")
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per update")
    p.add_argument("--tokens", type=int, default=48, help="sampled tokens per completion")
    p.add_argument("--updates", type=int, default=10,
                   help="timed paired updates per side, like for like (TRL's value backbone "
                        "frozen, as ours)")
    p.add_argument("--full-value-updates", type=int, default=10,
                   help="timed paired updates against TRL's default (its whole value model "
                        "trained); 0 skips that comparison")
    p.add_argument("--dtype-updates", type=int, default=10,
                   help="timed paired updates of ours in float32 vs the product's dtype "
                        "('auto'); 0 skips that comparison")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the trainer's setting in the local stack, and "
                        "steadier on a shared host)")
    p.add_argument("--minilm", action="store_true",
                   help="also ours with the production reward model (not interleaved)")
    p.add_argument("--max-seconds", type=float, default=3600,
                   help="skip comparisons left after this")
    p.add_argument("--out", default="")
    args = p.parse_args()
    settle()
    torch.set_num_threads(args.threads)
    budget = Deadline(args.max_seconds)
    ours = Ours(args, minilm=False)
    comparisons = []

    # 1. like for like first (the headline), then TRL's default value model; each a run
    #    of paired updates interleaved with ours
    for name, frozen, updates in (("TRL, value backbone frozen (like for like)", True,
                                   args.updates),
                                  ("TRL, whole value model trained (its default)", False,
                                   args.full_value_updates)):
        if updates <= 0 or budget.passed():
            print(f"{name}: skipped", flush=True)
            continue
        mine, trl, paired = interleaved(args, ours, frozen, updates)
        gc.collect()
        lo, hi = median_interval(paired)
        comparisons.append({"peer": name, "frozen_value": frozen, "ours": mine, "trl": trl,
                            "paired_ratios": paired, "ratio_median": median(paired),
                            "ratio_lo": lo, "ratio_hi": hi})
        print(f"{name}: ours/TRL per pair {[round(x, 2) for x in paired]}", flush=True)

    # 2. ours in float32 (as against TRL) vs ours with the product's dtype ("auto": bf16
    #    where the CPU computes it natively), interleaved update by update
    dtypes = None
    if args.dtype_updates > 0 and not budget.passed():
        dtypes = compare_dtypes(args, ours)
        print(f"ours auto/float32 per pair {[round(x, 2) for x in dtypes['paired_ratios']]}",
              flush=True)

    # 3. optional: ours with the production reward model, alone
    extra = run_ours(args, minilm=True) if args.minilm and not budget.passed() else None
    rows = []
    for c in comparisons:
        for side, label in (("trl", c["peer"]), ("ours", "ours (trainer/ppo/trainer.py)")):
            r = c[side]
            rows.append([label, median(r["update_s"]), min(r["update_s"]),
                         max(r["update_s"]), len(r["update_s"]), r["response_length"],
                         f"{r['trainable_params']:,}"])
    if extra is not None:
        rows.append(["ours, MiniLM personal reward (alone)", median(extra["update_s"]),
                     min(extra["update_s"]), max(extra["update_s"]), len(extra["update_s"]),
                     extra["response_length"], f"{extra['trainable_params']:,}"])
    if rows:
        print(table(["implementation", "update s (median)", "min s", "max s", "updates",
                     "tokens", "trainable params"], rows))
    if comparisons:
        print(table(["ours vs", "paired updates", "ratio ours/TRL, median", "95% interval"],
                    [[c["peer"], len(c["paired_ratios"]), c["ratio_median"],
                      f"{c['ratio_lo']:.2f} - {c['ratio_hi']:.2f}"] for c in comparisons]))
    if dtypes is not None:
        print(table(["ours", "base dtype", "update s (median)", "min s", "max s", "updates"],
                    [[side, dtypes[side]["dtype"], median(dtypes[side]["update_s"]),
                      min(dtypes[side]["update_s"]), max(dtypes[side]["update_s"]),
                      len(dtypes[side]["update_s"])] for side in ("float32", "auto")]))
        print(table(["auto vs float32", "paired updates", "ratio, median", "95% interval"],
                    [["update time", len(dtypes["paired_ratios"]), dtypes["ratio_median"],
                      f"{dtypes['ratio_lo']:.2f} - {dtypes['ratio_hi']:.2f}"]]))
    settings = vars(args) | {"model_dir": str(Path(args.model).resolve().name),
                             "torch": torch.__version__}
    write_result("ppo", settings, {"comparisons": comparisons, "dtypes": dtypes,
                                   "minilm": extra}, args.out or None)


if __name__ == "__main__":
    main()
