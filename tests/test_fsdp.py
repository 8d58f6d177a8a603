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
`trl_plrs.fsdp` in one process: the checks, which modules stay out of `fully_shard`, and plain-tensor arithmetic. The
2-process FSDP2 runs (sharded weights, merges into shards, resume) are in `tests/test_distributed.py`.
"""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import FullyShardedDataParallelPlugin
from peft import LoraConfig, get_peft_model
from transformers import BitsAndBytesConfig

from trl_plrs.fsdp import (
    adapter_modules,
    add_to_weight,
    average_gradients_across_ranks,
    check_fsdp_support,
    full_values,
    is_sharded,
    keep_adapters_replicated,
)
from trl_plrs.testing import build_tiny_model


def _accelerator(fsdp_plugin):
    return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=fsdp_plugin), is_fsdp2=fsdp_plugin is not None)


def _quantized(**config):
    return SimpleNamespace(hf_quantizer=SimpleNamespace(quantization_config=BitsAndBytesConfig(**config)))


def test_fsdp1_and_unshardable_quantized_bases_are_refused():
    fsdp2 = _accelerator(SimpleNamespace(fsdp_version=2))
    check_fsdp_support(_accelerator(None), _quantized(load_in_8bit=True), is_quantized=True)  # no FSDP
    check_fsdp_support(fsdp2, None, is_quantized=False)
    with pytest.raises(ValueError, match=r"`fsdp_version` is 1: .* FSDP2 only .*accelerate_configs/fsdp2.yaml"):
        check_fsdp_support(_accelerator(SimpleNamespace(fsdp_version=1)), None, is_quantized=False)
    # QLoRA: 4-bit weights stored in a floating dtype are sharded like any weight (tested in test_distributed.py).
    check_fsdp_support(fsdp2, _quantized(load_in_4bit=True, bnb_4bit_quant_storage=torch.bfloat16), True)
    with pytest.raises(
        ValueError, match=r"`bnb_4bit_quant_storage` is torch.uint8: .*bnb_4bit_quant_storage bfloat16"
    ):
        check_fsdp_support(fsdp2, _quantized(load_in_4bit=True), is_quantized=True)
    with pytest.raises(ValueError, match=r"An 8-bit base .* under FSDP.*deepspeed_zero2.yaml"):
        check_fsdp_support(fsdp2, _quantized(load_in_8bit=True), is_quantized=True)


@pytest.fixture
def peft_model(tokenizer):
    return get_peft_model(build_tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_every_adapter_container_stays_out_of_fully_shard(peft_model):
    modules = adapter_modules(peft_model)
    params = {id(param) for module in modules for param in module.parameters()}
    lora = {id(param) for name, param in peft_model.named_parameters() if ".lora_" in name}
    base = {id(param) for name, param in peft_model.named_parameters() if ".lora_" not in name}
    assert params == lora and lora and not params & base

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    keep_adapters_replicated(peft_model, _accelerator(None))  # without FSDP2: nothing to do
    assert plugin.ignored_modules is None
    keep_adapters_replicated(peft_model, _accelerator(plugin))
    assert plugin.ignored_modules == modules


def test_modules_the_user_ignored_stay_ignored(peft_model):
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.ignored_modules = r".*\.embed_tokens"  # a name pattern, as accelerate accepts it
    keep_adapters_replicated(peft_model, _accelerator(plugin))
    embeddings = peft_model.get_input_embeddings()
    assert plugin.ignored_modules[0] is embeddings
    assert plugin.ignored_modules[1:] == adapter_modules(peft_model)


def test_plain_tensors_without_a_process_group():
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    delta = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    add_to_weight(weight, delta)
    assert weight.dtype == torch.float32 and torch.equal(weight.data, delta.float())
    assert not is_sharded(weight) and torch.equal(full_values(weight), weight.data)
    # One process: nothing to average, no hook installed.
    assert average_gradients_across_ranks([weight], SimpleNamespace(sync_gradients=True)) == []
