"""Seeded sampling on vLLM's CPU backend (services/server/vllm_seeded.py): a seeded request
whose prompt is prefilled over several engine steps used to kill the engine ("CPU
Generator does not use offset"); with the project's plugin it is answered, and with the
same text as when its prompt fits one step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from services.server.vllm_seeded import RewindableGenerator

SCRIPT = '''
import json, sys
from vllm import LLM, SamplingParams

def answer(model, budget):
    llm = LLM(model=model, dtype="float32", max_model_len=512, max_num_batched_tokens=budget,
              max_num_seqs=4, enforce_eager=True, gpu_memory_utilization=0.03, seed=0)
    prompt = " ".join(["the sea is wide and the wind is"] * 24)  # about 190 tokens
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    texts = [llm.generate([prompt], params)[0].outputs[0].text for _ in range(2)]
    del llm
    return texts

if __name__ == "__main__":
    chunked = answer(sys.argv[1], 64)  # the prompt takes several steps
    whole = answer(sys.argv[1], 512)   # one step
    print("RESULT " + json.dumps({"chunked": chunked, "whole": whole}))
'''


def test_a_rewindable_generator_undoes_the_steps_sample() -> None:
    stock = torch.Generator(device="cpu")
    stock.manual_seed(7)
    gen = RewindableGenerator.copy_of(stock)
    expected = torch.empty(4).exponential_(generator=stock)
    gen.save()
    torch.empty(4).exponential_(generator=gen)  # a partial prefill's sample, discarded
    gen.set_offset(gen.get_offset() - 4)  # what vLLM calls
    assert torch.equal(torch.empty(4).exponential_(generator=gen), expected)


def test_a_seeded_prompt_prefilled_in_chunks_is_answered_as_in_one_step(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "seeded.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(tiny_model_dir)],
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["chunked"][0] == result["chunked"][1], "the seed reproduces"
    assert result["chunked"] == result["whole"], "however the prompt was split"
