"""A tiny random Llama with a byte-level BPE tokenizer, built locally for tests.

It loads in transformers, PEFT and vLLM alike, so tests exercise the real code
paths where the size of the model does not matter.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today? fine thanks",
    "a short answer. a long and detailed answer with many words",
    "- bullet one\n- bullet two\n- bullet three",
    "Paris is the capital of France. Rome is the capital of Italy.",
    "0123456789 !?.,;:'\"()[]{}<>/\\|@#$%^&*+=_-~`",
]

VERSION = "tiny-llama-v1"


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model into ``out_dir`` once; return the directory."""
    marker = out_dir / "tiny_model.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == VERSION:
        return out_dir
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    bpe.train_from_iterator(_CORPUS * 20, vocab_size=512, min_frequency=1, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker.write_text(json.dumps({"version": VERSION}))
    return out_dir
