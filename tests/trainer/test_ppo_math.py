"""PPO maths against plain Python loops and hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.ppo import maths as ppo_math


def _ragged_mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths])


def _gae_reference(
    rewards: list[float], values: list[float], mask: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Textbook GAE on one sequence: the masked positions are simply not part of it."""
    steps = [t for t, m in enumerate(mask) if m]
    advantages, returns = [0.0] * len(mask), [0.0] * len(mask)
    last = 0.0
    for k in reversed(range(len(steps))):
        t = steps[k]
        next_value = values[steps[k + 1]] if k + 1 < len(steps) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        advantages[t] = last
        returns[t] = last + values[t]
    return advantages, returns


@pytest.mark.parametrize("holes", [False, True])
def test_gae_matches_plain_double_loop(holes: bool) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, gamma, lam = 5, 9, 0.97, 0.9
    rewards, values = torch.randn(b, t, generator=g), torch.randn(b, t, generator=g)
    mask = _ragged_mask([9, 1, 4, 7, 2], t)
    if holes:  # the recursion must also skip masked positions inside a sequence
        mask[0, 3] = mask[3, 1] = 0.0
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma, lam)
    for i in range(b):
        exp_adv, exp_ret = _gae_reference(
            rewards[i].tolist(), values[i].tolist(), mask[i].tolist(), gamma, lam)
        assert advantages[i].tolist() == pytest.approx(exp_adv, abs=1e-5)
        assert returns[i].tolist() == pytest.approx(exp_ret, abs=1e-5)


def test_masked_mean_and_var_match_plain_loops() -> None:
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(4, 6, generator=g), _ragged_mask([6, 2, 3, 1], 6)
    kept = [v for v, m in zip(x.flatten().tolist(), mask.flatten().tolist(), strict=True) if m]
    mean = sum(kept) / len(kept)
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    assert ppo_math.masked_mean(x, mask).item() == pytest.approx(mean, abs=1e-6)
    assert ppo_math.masked_var(x, mask).item() == pytest.approx(var, abs=1e-5)
    assert ppo_math.masked_var(x, mask, unbiased=False).item() == pytest.approx(
        var * (len(kept) - 1) / len(kept), abs=1e-5)
    row_means = ppo_math.masked_mean(x, mask, dim=1)
    assert row_means[1].item() == pytest.approx(x[1, :2].mean().item(), abs=1e-6)


def test_masked_whiten_has_zero_mean_unit_variance_over_the_mask() -> None:
    g = torch.Generator().manual_seed(2)
    x, mask = torch.randn(6, 8, generator=g) * 5 + 3, _ragged_mask([8, 3, 5, 1, 7, 2], 8)
    whitened = ppo_math.masked_whiten(x, mask)
    assert ppo_math.masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert ppo_math.masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(whitened[mask == 0] == 0)
    kept_mean = ppo_math.masked_whiten(x, mask, shift_mean=False)
    assert ppo_math.masked_mean(kept_mean, mask).item() == pytest.approx(
        ppo_math.masked_mean(x, mask).item(), abs=1e-4)


def test_logprobs_and_entropy_match_plain_loops() -> None:
    g = torch.Generator().manual_seed(3)
    b, t, v = 3, 5, 11
    logits, tokens = torch.randn(b, t, v, generator=g), torch.randint(0, v, (b, t), generator=g)
    logprobs = ppo_math.logprobs_from_logits(logits, tokens)
    entropy = ppo_math.entropy_from_logits(logits)
    for i in range(b):
        for j in range(t):
            row = logits[i, j].tolist()
            log_z = math.log(sum(math.exp(z) for z in row))
            assert logprobs[i, j].item() == pytest.approx(row[tokens[i, j]] - log_z, abs=1e-5)
            probs = [math.exp(z - log_z) for z in row]
            exp_entropy = -sum(p * math.log(p) for p in probs)
            assert entropy[i, j].item() == pytest.approx(exp_entropy, abs=1e-5)


def test_per_token_kl_and_shaped_rewards() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert ppo_math.per_token_kl(logprobs, ref_logprobs).tolist()[0] == [0.5, -1.0, 0.0]
    rewards = ppo_math.shaped_rewards(torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, mask,
                                      kl_coef=0.1)
    # -0.1 * kl per token, the score on the last real token, nothing after the end
    expected = [[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]]
    for row, exp in zip(rewards.tolist(), expected, strict=True):
        assert row == pytest.approx(exp, abs=1e-6)


def test_clipped_pg_loss_on_hand_made_numbers() -> None:
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1 and a masked-out token with a huge ratio
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 100.0]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    pg_loss, clipfrac = ppo_math.clipped_pg_loss(new, old, advantages, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5;
    # max(1.1, 1.1) = 1.1 -> mean -0.2, one of three clipped
    assert pg_loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)


def test_clipped_value_loss_on_hand_made_numbers() -> None:
    values = torch.tensor([[1.0, 0.9, 5.0]])
    old_values = torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    v_loss, vf_clipfrac = ppo_math.clipped_value_loss(values, old_values, returns, mask, 0.2)
    # token 1: max((1 - 0)^2, (0.7 - 0)^2) = 1; token 2: max(0.1^2, (0.2 - 1)^2) = 0.64 (clipped)
    assert v_loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2, abs=1e-6)
    assert vf_clipfrac.item() == pytest.approx(0.5)


def test_approx_kl_and_adaptive_kl_coef() -> None:
    logprobs = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    assert ppo_math.approx_kl(logprobs, logprobs, mask).item() == 0.0
    r = 1.5  # (r - 1) - log r for one token
    kl = ppo_math.approx_kl(torch.tensor([[math.log(r)]]), torch.zeros(1, 1), torch.ones(1, 1))
    assert kl.item() == pytest.approx(r - 1 - math.log(r), abs=1e-6)
    # KL twice the target: the error is clipped to +0.2, scaled by n_steps / horizon
    assert ppo_math.adaptive_kl_coef(0.1, 12.0, 6.0, 100, 1000) == pytest.approx(0.1 * 1.02)
    assert ppo_math.adaptive_kl_coef(0.1, 5.4, 6.0, 1000, 1000) == pytest.approx(0.1 * 0.9)


def test_leave_one_out_advantages_match_a_plain_loop() -> None:
    rewards = [0.5, 2.0, -1.0, 0.0, 3.0, 3.0, 1.0, -2.0]
    got = ppo_math.leave_one_out_advantages(torch.tensor(rewards), group_size=4).tolist()
    expected = []
    for i, r in enumerate(rewards):
        group = range(i // 4 * 4, i // 4 * 4 + 4)
        others = [rewards[j] for j in group if j != i]
        expected.append(r - sum(others) / len(others))
    assert got == pytest.approx(expected)
    # a prompt's own level is gone: shifting one group's rewards changes nothing
    shifted = torch.tensor(rewards) + torch.tensor([10.0] * 4 + [0.0] * 4)
    assert ppo_math.leave_one_out_advantages(shifted, 4).tolist() == pytest.approx(expected,
                                                                              abs=1e-5)


@pytest.mark.parametrize(("n", "k"), [(8, 1), (8, 3)])
def test_leave_one_out_needs_whole_groups_of_two_or_more(n: int, k: int) -> None:
    with pytest.raises(ValueError, match="groups"):
        ppo_math.leave_one_out_advantages(torch.zeros(n), k)
