"""A LoRA adapter for the tiny test model made to prefer something: it ends the answer
at once, so "concise" prefers its (empty) answers to the base model's random text.

On the tiny random model one token's probability cannot go much above 0.3 at
temperature 1 (the logits are flat); sampled at a low temperature such as 0.3 the
end-of-sequence token wins more than 99.9% of the time. Trains in about 2 s."""

from __future__ import annotations

from pathlib import Path

from demo.prompts import feedback_prompts


def make_terse_adapter(base_dir: Path, out_dir: Path, steps: int = 20) -> Path:
    """A rank-8 q_proj/v_proj adapter that raises end-of-sequence as the first token of
    an answer, trained on the feedback prompts only (held-out prompts stay unseen)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a small host
    torch.manual_seed(0)
    try:
        tok = AutoTokenizer.from_pretrained(base_dir)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
            LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                       lora_dropout=0.0))
        chats = [tok.apply_chat_template([{"role": "user", "content": p}],
                                         add_generation_prompt=True, tokenize=False)
                 for p in feedback_prompts()]
        batch = tok(chats, return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
        optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
        for _ in range(steps):
            logits = model(**batch).logits[:, -1, :]  # (B, V): the answer's first token
            loss = -torch.log_softmax(logits, dim=-1)[:, tok.eos_token_id].mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
        model.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(threads)
    return out_dir
