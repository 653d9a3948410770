"""One base model in memory, one LoRA adapter and value head per resident user.

The pool is an LRU cache of users' trainable parts on a single PEFT model:
``activate(user_id)`` makes a user's adapter the active one (loading it from
``adapter_source`` or creating a fresh one when it is not resident) and evicts
the least recently used user once more than ``max_resident_users`` are loaded.
Persisting is the caller's job: ``on_evict`` hooks run before an adapter is
dropped, and ``export_adapter`` writes the PEFT folder vLLM loads.

The reference policy is the same model with the adapter disabled
(``with pool.model.disable_adapter():``), never a second copy.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from trainer.ppo.config import PPOConfig

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VALUE_HEAD_WEIGHTS = "value_head.safetensors"

AdapterSource = Callable[[str], Path | None]
"""Returns the folder holding a user's saved adapter, or None for a fresh one."""
EvictHook = Callable[[str], None]
"""Called with a user id while its adapter is still resident, just before eviction."""


@dataclass(frozen=True)
class ResidentUser:
    """What the pool holds for one resident user."""

    adapter_name: str
    """Name of the user's adapter inside the PEFT model (unique per load)."""
    value_head: nn.Linear
    """Linear value head on the final hidden state: (B, T, H) -> (B, T, 1)."""


def lora_config(r: int, alpha: int, target_modules: tuple[str, ...], dropout: float) -> LoraConfig:
    """The LoRA configuration of every fresh user adapter."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


class PolicyPool:
    """A shared base causal LM with an LRU set of per-user LoRA adapters and value heads."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        lora: LoraConfig,
        max_resident_users: int,
        adapter_source: AdapterSource | None = None,
        on_evict: EvictHook | None = None,
    ) -> None:
        if max_resident_users < 1:
            raise ValueError(f"max_resident_users must be >= 1, got {max_resident_users}")
        model.requires_grad_(False)
        model.eval()
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_contiguous_input)
        if tokenizer.pad_token is None:  # batches are padded (masked), any token will do
            tokenizer.pad_token = tokenizer.eos_token
        self._base = model
        self._peft: PeftModel | None = None
        self.tokenizer = tokenizer
        self.lora = lora
        self.max_resident_users = max_resident_users
        self.adapter_source = adapter_source
        self._evict_hooks: list[EvictHook] = [on_evict] if on_evict else []
        self._resident: OrderedDict[str, ResidentUser] = OrderedDict()  # LRU first
        self._loads = itertools.count()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        config: PPOConfig,
        adapter_source: AdapterSource | None = None,
        on_evict: EvictHook | None = None,
    ) -> PolicyPool:
        """Load the base model and tokenizer from ``model_dir`` as ``config`` says."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = base_dtype(config.dtype, torch.device(config.device))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(config.device)
        logger.info("policy base model in %s on %s", dtype, config.device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lora = lora_config(config.lora_r, config.lora_alpha, config.lora_target_modules,
                           config.lora_dropout)
        return cls(model, tokenizer, lora, config.max_resident_users, adapter_source, on_evict)

    # --- queries -------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The PEFT model (the base model until the first user is activated)."""
        return self._peft if self._peft is not None else self._base

    @property
    def device(self) -> torch.device:
        return next(self._base.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self._base.config.get_text_config().hidden_size)

    def resident_users(self) -> list[str]:
        """Resident user ids, least recently used first."""
        return list(self._resident)

    def user(self, user_id: str) -> ResidentUser:
        """The resident parts of ``user_id`` (KeyError when not resident)."""
        return self._resident[user_id]

    def adapter_parameters(self, user_id: str) -> dict[str, nn.Parameter]:
        """The user's LoRA parameters by name (the same objects the model uses)."""
        marker = f".{self._resident[user_id].adapter_name}."
        return {n: p for n, p in self.model.named_parameters() if marker in n}

    def trainable_parameters(self, user_id: str) -> list[nn.Parameter]:
        """The user's LoRA and value-head parameters: what its optimiser updates."""
        head = self._resident[user_id].value_head
        return [*self.adapter_parameters(user_id).values(), *head.parameters()]

    def add_evict_hook(self, hook: EvictHook) -> None:
        self._evict_hooks.append(hook)

    # --- residency -----------------------------------------------------------------------

    def activate(self, user_id: str) -> ResidentUser:
        """Make ``user_id``'s adapter the active one, loading or creating it if needed."""
        if user_id not in self._resident:
            source = self.adapter_source(user_id) if self.adapter_source else None
            return self.load_adapter(user_id, source)
        self._resident.move_to_end(user_id)
        self._set_active(user_id)
        return self._resident[user_id]

    def load_adapter(self, user_id: str, adapter_dir: Path | None = None) -> ResidentUser:
        """(Re)load ``user_id`` from ``adapter_dir`` (fresh weights when None) and activate it.

        A resident copy of the user is replaced without running the evict hooks.
        """
        name = _adapter_name(user_id, next(self._loads))
        if self._peft is None:
            self._peft = self._new_peft_model(name, adapter_dir)
        elif adapter_dir is None:
            self._peft.add_adapter(name, self.lora)
        else:
            # loaded frozen: PEFT's trainable load reads the active adapter's config, which
            # is gone once the last resident user was dropped; _set_active unfreezes it
            self._peft.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
        self._peft.eval()
        self._drop(user_id)
        self._resident[user_id] = ResidentUser(name, self._value_head(adapter_dir))
        self._set_active(user_id)
        logger.info("loaded adapter of user %s from %s as %s", user_id, adapter_dir or "scratch",
                    name)
        self._evict_over_capacity()
        return self._resident[user_id]

    def evict(self, user_id: str) -> None:
        """Run the evict hooks for ``user_id``, then drop its adapter and value head."""
        if user_id not in self._resident:
            return
        for hook in self._evict_hooks:
            hook(user_id)
        self._drop(user_id)
        logger.info("evicted adapter of user %s", user_id)

    def export_adapter(self, user_id: str, out_dir: Path) -> Path:
        """Write the user's adapter in PEFT format (adapter_config.json, adapter_model.safetensors,
        loadable by vLLM and PEFT) plus value_head.safetensors into ``out_dir``."""
        resident = self._resident[user_id]
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            self._peft.save_pretrained(tmp, selected_adapters=[resident.adapter_name])
            saved = Path(tmp) / resident.adapter_name  # PEFT nests non-default adapter names
            for file_name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                (saved / file_name).replace(out_dir / file_name)
        head = resident.value_head.state_dict()
        head = {k: v.detach().cpu().contiguous() for k, v in head.items()}
        save_file(head, str(out_dir / VALUE_HEAD_WEIGHTS))
        return out_dir

    # --- internals -----------------------------------------------------------------------

    def _new_peft_model(self, name: str, adapter_dir: Path | None) -> PeftModel:
        if adapter_dir is None:
            return get_peft_model(self._base, self.lora, adapter_name=name)
        return PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=name,
                                         is_trainable=True)

    def _set_active(self, user_id: str) -> None:
        """Route the model through the user's adapter; only its parameters require grad,
        and they are float32 whatever the base model's dtype (master weights)."""
        self._peft.set_adapter(self._resident[user_id].adapter_name)
        self._peft.base_model.model.requires_grad_(False)
        for p in self.trainable_parameters(user_id):
            if p.dtype != torch.float32:
                p.data = p.data.float()
            p.requires_grad_(True)

    def _value_head(self, adapter_dir: Path | None) -> nn.Linear:
        param = next(self._base.parameters())
        head = nn.Linear(self.hidden_size, 1, device=param.device, dtype=torch.float32)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        weights = adapter_dir / VALUE_HEAD_WEIGHTS if adapter_dir is not None else None
        if weights is not None and weights.exists():
            head.load_state_dict(load_file(str(weights), device=str(param.device)))
        return head

    def _drop(self, user_id: str) -> None:
        resident = self._resident.pop(user_id, None)
        if resident is not None:
            self._peft.delete_adapter(resident.adapter_name)

    def _evict_over_capacity(self) -> None:
        while len(self._resident) > self.max_resident_users:
            self.evict(next(iter(self._resident)))


def _contiguous_input(_module: nn.Module, args: tuple[torch.Tensor, ...]
                      ) -> tuple[torch.Tensor, ...]:
    """The output head's input made contiguous. The model slices the positions it needs
    logits for (``logits_to_keep``; the last one in generation); with that strided input
    and a frozen weight torch's matmul takes its batched path, which copies the whole
    vocabulary matrix once per sequence: a bf16 SmolLM2 forward took twice as long, and
    every generated token paid it too."""
    return (args[0].contiguous(), *args[1:])


def base_dtype(name: str, device: torch.device) -> torch.dtype:
    """The base model's dtype: ``name``, or for "auto" bfloat16 where ``device`` computes
    it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX tiles: on SmolLM2 a
    PPO iteration then takes 0.7x the float32 time on one core) and float32 elsewhere
    (emulated bf16 is slower than float32)."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    else:
        native = False
    return torch.bfloat16 if native else torch.float32


def _adapter_name(user_id: str, load_number: int) -> str:
    """A module-name-safe adapter name, unique per load (PEFT keys cannot hold dots)."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:8]
    return f"u_{re.sub(r'[^A-Za-z0-9_]', '_', user_id)[:40]}_{digest}_{load_number}"
