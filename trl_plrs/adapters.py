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
Stage transitions on a [`~peft.PeftModel`]: thin wrappers over PEFT's adapter API.

The adapter being trained is always PEFT's `"default"` adapter, so that the Trainer's checkpointing, best-model
loading and `save_pretrained` keep working unchanged. At a transition the finished `"default"` adapter is either
merged into the base weights and deleted (`"merge"`), or folded into the one frozen, still active adapter
`"frozen_stages"` that carries every finished stage (`"stack"`); then a fresh `"default"` adapter of the next stage's
rank is added. A targeted layer thus runs at most two LoRA branches, whatever the number of stages.

Under DeepSpeed ZeRO-3 the parameters are partitioned across ranks; every read or write of a weight here happens
inside [`gathered_parameters`], one layer at a time, so that the partitions stay consistent.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.integrations import dequantize_module_weight
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .fsdp import add_to_weight, full_values


DEFAULT_ADAPTER = "default"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


# Stack mode: the one frozen, active adapter that carries every finished stage (see `fuse_into_frozen`).
FROZEN_ADAPTER = "frozen_stages"


def named_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """Every LoRA layer of `model`, with its module name."""
    return ((name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer))


def lora_layers(model: nn.Module) -> Iterator[LoraLayer]:
    """Every LoRA layer of `model`."""
    return (module for _, module in named_lora_layers(model))


@contextlib.contextmanager
def gathered_parameters(params: Sequence[nn.Parameter], modify: bool):
    """
    Give every rank the full `params` for the duration of the block under DeepSpeed ZeRO-3; a no-op otherwise.

    With `modify=True`, what rank 0 writes is partitioned back to every rank on exit, so every rank must make the same
    change (they do here: the same deterministic arithmetic on the same gathered values).
    """
    partitioned = [param for param in params if hasattr(param, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


def _adapter_params(layer: LoraLayer, adapter_name: str) -> list[nn.Parameter]:
    return [layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight]


def upcast_base_weights(model: nn.Module) -> int:
    """
    Make every LoRA-targeted base weight fp32 (in place; bf16 and fp16 values are exact in fp32), so that merges into
    it are exact. Returns the number of weights upcast. Under autocast the layer still runs its matmul in 16 bits.
    """
    upcast = 0
    for layer in lora_layers(model):
        weight = layer.get_base_layer().weight
        if weight.dtype in (torch.bfloat16, torch.float16):
            weight.data = weight.data.to(torch.float32)
            upcast += weight.numel()
    return upcast


def merge_adapter_into_base(model: PeftModel, adapter_name: str = DEFAULT_ADAPTER) -> float:
    """
    Add the adapter's delta `B @ A * scaling` to the base weights, then delete the adapter.

    PEFT's `merge_adapter` keeps the adapter and marks it as merged, and a later `set_adapter` silently un-merges it;
    `merge_and_unload` merges but drops every LoRA layer, so no new adapter could be added in place. Here each layer's
    own `get_delta_weight` is added to its base weight, and the adapter is deleted so that nothing can undo the merge.

    Returns:
        `float`: The share of the adapter's update that the base weights' dtype rounded away,
        `||delta - applied|| / ||delta||` over every merged layer (0.0 into fp32 weights, up to ~0.8 into bf16).
    """
    lost_squared, total_squared = 0.0, 0.0
    for layer in lora_layers(model):
        if adapter_name not in layer.lora_A:
            continue
        base_weight = layer.get_base_layer().weight
        with gathered_parameters([base_weight, *_adapter_params(layer, adapter_name)], modify=True):
            with torch.no_grad():
                delta = layer.get_delta_weight(adapter_name)
                if base_weight.dtype in (torch.float32, torch.float64):
                    add_to_weight(base_weight, delta)
                    continue
                before = full_values(base_weight).float()
                add_to_weight(base_weight, delta)
                delta = delta.float()
                lost_squared += float((delta - (full_values(base_weight).float() - before)).square().sum())
                total_squared += float(delta.square().sum())
    model.delete_adapter(adapter_name)
    return (lost_squared / total_squared) ** 0.5 if total_squared > 0 else 0.0


def fuse_into_frozen(model: PeftModel, adapter_name: str = DEFAULT_ADAPTER) -> LoraConfig:
    """
    Fold the finished adapter into the one frozen adapter [`FROZEN_ADAPTER`] that carries every finished stage
    (stack mode), then delete it. Returns the frozen adapter's new config.

    The frozen adapter is the `"cat"` combination of the finished stages, as [`concatenate_lora_adapters`] exports
    them: `A` stacks each stage's `A * scaling` row-wise, `B` stacks each stage's `B` column-wise, and its own scaling
    is 1 (`lora_alpha = r`), so `B @ A = sum_k B_k @ A_k * scaling_k` while every targeted layer runs one frozen LoRA
    branch instead of one per finished stage. Its weights are fp32 (fp64 on a float64 model; a 16-bit base runs them
    under autocast as it runs any adapter) and it has no dropout: it acts as fixed weights, as the stage would once
    merged. The concatenation is computed in that precision from the adapters' values, so rebuilding it from the saved
    stage adapters on a resume gives the same tensors bit for bit.
    """
    config = model.peft_config[adapter_name]
    frozen = model.peft_config.get(FROZEN_ADAPTER)
    rank = config.r + (frozen.r if frozen is not None else 0)
    fused = {}
    for name, layer in named_lora_layers(model):
        if adapter_name not in layer.lora_A:
            continue
        params = _adapter_params(layer, adapter_name)
        if frozen is not None:
            params += _adapter_params(layer, FROZEN_ADAPTER)
        with gathered_parameters(params, modify=False), torch.no_grad():
            dtype = torch.promote_types(params[0].dtype, torch.float32)  # fp32, or fp64 on a float64 model
            lora_a = layer.lora_A[adapter_name].weight.to(dtype) * layer.scaling[adapter_name]
            lora_b = layer.lora_B[adapter_name].weight.to(dtype)
            if frozen is not None:  # earlier stages first, as the export orders them
                lora_a = torch.cat([layer.lora_A[FROZEN_ADAPTER].weight.to(dtype), lora_a], dim=0)
                lora_b = torch.cat([layer.lora_B[FROZEN_ADAPTER].weight.to(dtype), lora_b], dim=1)
            # Copies: under ZeRO-3 the gathered values are freed on exit.
            fused[name] = (lora_a.clone(), lora_b.clone())
    if frozen is not None:
        # With the finished adapter active beside it, PEFT has no active adapter to replace (and warn about).
        model.base_model.set_adapter([adapter_name, FROZEN_ADAPTER])
        model.delete_adapter(FROZEN_ADAPTER)
    fused_config = replace(
        config,
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        lora_dropout=0.0,
        rank_pattern={},
        alpha_pattern={},
    )
    model.add_adapter(FROZEN_ADAPTER, fused_config)
    for name, layer in named_lora_layers(model):
        if name not in fused:
            continue
        with torch.no_grad():
            for param, value in zip(_adapter_params(layer, FROZEN_ADAPTER), fused[name], strict=True):
                param.copy_(value)
    model.base_model.set_adapter([adapter_name, FROZEN_ADAPTER])
    model.delete_adapter(adapter_name)
    return fused_config


def add_stage_adapter(
    model: PeftModel, peft_config: LoraConfig, frozen_adapters: Sequence[str], autocast_adapter_dtype: bool = True
) -> None:
    """
    Add a fresh `"default"` adapter with `peft_config` and make it the only trainable one, with `frozen_adapters`
    (stack mode) active beside it. PEFT initialises `B` to zero, so the model's function does not change.
    """
    model.add_adapter(DEFAULT_ADAPTER, peft_config, autocast_adapter_dtype=autocast_adapter_dtype)
    activate_stage_adapters(model, frozen_adapters)


def activate_stage_adapters(model: PeftModel, frozen_adapters: Sequence[str]) -> None:
    """Activate `"default"` (trainable) and `frozen_adapters` (frozen) together."""
    # `PeftModel.set_adapter` takes a single name; the tuner activates several at once. The trainable adapter comes
    # first: the Trainer's checkpoint and best-model loading treat `active_adapters[0]` as the one being trained.
    model.base_model.set_adapter([DEFAULT_ADAPTER, *frozen_adapters])
    # What `PeftModel.set_adapter` records: the adapter that accelerate's FSDP checkpoints (`adapter_only`) save and
    # load, and `active_peft_config`. Deleting the finished adapter made PEFT pick another one here.
    model.active_adapter = DEFAULT_ADAPTER
    if frozen_adapters:
        model.base_model.set_requires_grad(list(frozen_adapters), requires_grad=False)


def adapter_state_dict(
    model: PeftModel, adapter_name: str = DEFAULT_ADAPTER, deepspeed_enabled: bool = False
) -> dict[str, torch.Tensor]:
    """
    The full weights of one adapter in fp32 on CPU, keyed as in `model.state_dict()`, on every rank.

    Under DeepSpeed (`deepspeed_enabled`) the values are the optimizer's fp32 master weights
    (`deepspeed.utils.safe_get_full_fp32_param`) where it holds them: in a bf16/fp16 run the module's own copy is
    rounded to 16 bits. A parameter the optimizer does not hold is gathered alone under ZeRO-3. Nothing else of the
    model is gathered, so this needs neither `stage3_gather_16bit_weights_on_model_save` nor the memory of a full
    state dict. Under DeepSpeed this is a collective call: every rank must make it, in the same order.
    """
    fp32_master = None
    if deepspeed_enabled:
        from deepspeed.utils import safe_get_full_fp32_param as fp32_master
    state_dict = {}
    for name, param in model.named_parameters():
        if ".lora_" not in name or adapter_name not in name.split("."):
            continue
        value = fp32_master(param) if fp32_master is not None else None
        if value is None:
            with gathered_parameters([param], modify=False):
                value = param.detach().clone()
        state_dict[name] = value.to(device="cpu", dtype=torch.float32)
    return state_dict


def trainable_adapter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA adapters that have at least one parameter with `requires_grad=True`."""
    names = set()
    for layer in lora_layers(model):
        for name in layer.lora_A:
            if any(param.requires_grad for param in _adapter_params(layer, name)):
                names.add(name)
    return names


def concatenate_lora_adapters(adapter_dirs: Sequence[str], output_dir: str) -> LoraConfig:
    """
    Write to `output_dir` one standard LoRA adapter equal to the sum of the saved adapters in `adapter_dirs` (write
    it to a staging folder and install it with `checkpointing.install_files` where a crash must not tear it).

    This is the `"cat"` combination of PEFT's `add_weighted_adapter` (rank = sum of ranks, alpha = rank, so scaling is
    1, and `A_k` carries its own scaling), computed on the saved files rather than on a live model: in merge mode the
    earlier adapters no longer exist in the model, and under ZeRO-3 the live weights are partitioned. Loaded with
    `PeftModel.from_pretrained(original_base, output_dir)`, the result reproduces base + every stage's delta.

    Returns:
        [`~peft.LoraConfig`]: The configuration written with the adapter.
    """
    configs = [LoraConfig.from_pretrained(adapter_dir) for adapter_dir in adapter_dirs]
    total_rank = sum(config.r for config in configs)

    combined = {}
    # Tensors are read one at a time from the (memory-mapped) files, so that the stage adapters are not all held in
    # memory beside the combined one: this is the curriculum's peak of resident memory (benchmarks/results/memory.md).
    with contextlib.ExitStack() as stack:
        files = [
            stack.enter_context(safe_open(os.path.join(adapter_dir, ADAPTER_WEIGHTS_NAME), framework="pt"))
            for adapter_dir in adapter_dirs
        ]
        for key in files[0].keys():
            if ".lora_B." in key:
                continue
            if ".lora_A." not in key:
                raise ValueError(
                    f"Cannot concatenate adapters with weights other than LoRA A/B matrices, found {key!r}."
                )
            key_b = key.replace(".lora_A.", ".lora_B.")
            combined[key] = torch.cat(
                [file.get_tensor(key) * _scaling(config) for file, config in zip(files, configs, strict=True)], dim=0
            ).contiguous()
            combined[key_b] = torch.cat([file.get_tensor(key_b) for file in files], dim=1).contiguous()

    config = replace(
        configs[0], r=total_rank, lora_alpha=total_rank, use_rslora=False, rank_pattern={}, alpha_pattern={}
    )
    os.makedirs(output_dir, exist_ok=True)
    save_file(combined, os.path.join(output_dir, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(output_dir)
    return config


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    fp32 copies of the LoRA-targeted base weights (dequantized on a 4-bit/8-bit base), by layer name: the reference
    [`export_mismatch`] needs.
    """
    return {
        name: dequantize_module_weight(module.get_base_layer())
        .detach()
        .to(device="cpu", dtype=torch.float32, copy=True)
        for name, module in named_lora_layers(model)
    }


def export_mismatch(
    model: PeftModel, original_weights: dict[str, torch.Tensor], adapter_dirs: str | Sequence[str]
) -> dict[str, float]:
    """
    How far the live model is from what the curriculum exports, per LoRA-targeted layer (any dtype, 4-bit and 8-bit
    bases dequantized; not under ZeRO-3).

    For each layer, the live effective weight (current base weight + the delta of every active adapter, in fp32) is
    compared with the original base weight + the delta of the exported adapter:
    `||W_live - (W_0 + delta_export)|| / ||delta_export||`. 0 means the exported adapter carries exactly what the model
    learned; a bf16 merge of small updates gives ~0.8 (most of the learning is only in the export). Measure it while
    the stages' adapters are live, e.g. in the last stage's `on_stage_end`: after `train()` the trainer replaces them
    by the exported adapter itself.

    Args:
        model ([`~peft.PeftModel`]): The trained model, with its stage adapters merged or active.
        original_weights (`dict[str, torch.Tensor]`): [`base_weights`] of the model before training.
        adapter_dirs (`str` or `Sequence[str]`): Folder of the combined adapter (the curriculum's `output_dir`), or
            the stage adapters' folders (`output_dir/stage-{k}`), concatenated here.
    """
    if not isinstance(adapter_dirs, str):
        with tempfile.TemporaryDirectory() as combined_dir:
            concatenate_lora_adapters(adapter_dirs, combined_dir)
            return export_mismatch(model, original_weights, combined_dir)
    config = LoraConfig.from_pretrained(adapter_dirs)
    exported = load_file(os.path.join(adapter_dirs, ADAPTER_WEIGHTS_NAME))
    mismatch = {}
    for name, layer in named_lora_layers(model):
        if name not in original_weights:
            continue
        live = dequantize_module_weight(layer.get_base_layer()).detach().float()
        for adapter_name in layer.active_adapters:
            if adapter_name in layer.lora_A:
                live = live + layer.get_delta_weight(adapter_name).detach().float()
        key = name.removeprefix("base_model.model.")
        lora_a, lora_b = (
            exported[f"base_model.model.{key}.lora_{part}.weight"].to(device=live.device, dtype=torch.float32)
            for part in "AB"
        )
        delta = lora_b @ lora_a * _scaling(config)
        learned = live - original_weights[name].to(live.device)
        mismatch[name] = float((learned - delta).norm() / delta.norm().clamp_min(1e-30))
    return mismatch


def _scaling(config: LoraConfig) -> float:
    return config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r)
