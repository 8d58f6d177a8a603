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
The curriculum's stage adapters under FSDP2 (`fully_shard`).

`fully_shard` turns the parameters it is given into `DTensor` shards once, and has no way to take in a parameter
added later: an adapter added at a stage transition stays a plain tensor, and FSDP2 would neither shard it nor reduce
its gradient. So every stage adapter is kept out of FSDP2 from the start, the first one included
([`keep_adapters_replicated`], through accelerate's `ignored_modules`): the base weights, where the memory is, are
sharded; each stage adapter (a few MB to a few hundred MB) is replicated on every rank, as under DDP, and its gradient
is averaged across ranks at the end of each accumulation window ([`average_gradients_across_ranks`]). This is the
pattern transformers follows for a PEFT adapter attached to a model sharded at load time
(`Trainer._sync_replicated_trainable_parameters`, transformers 5.25). A merge adds each stage's update to the rows of
the base weight that the rank holds ([`add_to_weight`]); the frozen stack is replicated like the adapters.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle


def check_fsdp_support(accelerator, model: nn.Module, is_quantized: bool) -> None:
    """
    Refuse, before training, what the curriculum does not run under FSDP: FSDP1, and a quantized base whose weights
    `fully_shard` cannot shard (8-bit, or 4-bit with the default `uint8` storage, which accelerate leaves whole on every
    rank). A 4-bit (QLoRA) base with a floating `bnb_4bit_quant_storage` is sharded like any weight.
    """
    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if fsdp_plugin is None:
        return
    if getattr(fsdp_plugin, "fsdp_version", 1) != 2:
        raise ValueError(
            f"`fsdp_version` is {fsdp_plugin.fsdp_version}: `CurriculumSFTTrainer` runs under FSDP2 only (FSDP1 is "
            "deprecated by transformers 5.x). Set `fsdp_version: 2` in the accelerate config (see "
            "`accelerate_configs/fsdp2.yaml`) or `fsdp_config={'version': 2}`."
        )
    if not is_quantized:
        return
    config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if config is None or not getattr(config, "load_in_4bit", False):
        raise ValueError(
            "An 8-bit base cannot be trained by `CurriculumSFTTrainer` under FSDP: `fully_shard` cannot shard "
            "bitsandbytes' 8-bit weights. Use a 4-bit base with `bnb_4bit_quant_storage` set to the compute dtype "
            "(e.g. `--load_in_4bit --bnb_4bit_quant_storage bfloat16`), or train the 8-bit base with DDP "
            "(`accelerate_configs/multi_gpu.yaml`) or DeepSpeed ZeRO-2 (`accelerate_configs/deepspeed_zero2.yaml`)."
        )
    storage = getattr(config, "bnb_4bit_quant_storage", torch.uint8)
    if not storage.is_floating_point:
        raise ValueError(
            f"`bnb_4bit_quant_storage` is {storage}: under FSDP the 4-bit weights must be stored in a floating dtype "
            "for `fully_shard` to shard them (with `uint8` accelerate leaves every weight whole on every rank). Set "
            "it to the compute dtype: `BitsAndBytesConfig(..., bnb_4bit_quant_storage=torch.bfloat16)`, or "
            "`--bnb_4bit_quant_storage bfloat16` with `examples/train_plrs.py`."
        )


def fsdp2_enabled(accelerator) -> bool:
    """Whether `accelerator` shards the model with FSDP2 (`fully_shard`)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is an FSDP2 shard (a `DTensor`)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor) or isinstance(getattr(tensor, "data", None), DTensor)


def adapter_modules(model: nn.Module) -> list[nn.Module]:
    """The containers of every LoRA adapter of `model` (`lora_A`, `lora_B`, ... of each LoRA layer)."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    return [getattr(layer, name) for layer in layers for name in LoraLayer.adapter_layer_names]


def keep_adapters_replicated(model: nn.Module, accelerator) -> None:
    """
    Under FSDP2, add `model`'s LoRA adapters to the FSDP plugin's `ignored_modules`, which accelerate passes to
    `fully_shard` as `ignored_params`: the stage adapters then stay plain tensors on every rank, as the adapters of
    later stages will be. Modules the user listed (as modules or as a name pattern) stay ignored too.
    """
    import re

    if not fsdp2_enabled(accelerator):
        return
    fsdp_plugin = accelerator.state.fsdp_plugin
    ignored = fsdp_plugin.ignored_modules
    if isinstance(ignored, str):
        pattern = re.compile(ignored)
        ignored = [module for name, module in model.named_modules() if pattern.fullmatch(name)]
    fsdp_plugin.ignored_modules = [*(ignored or []), *adapter_modules(model)]


def average_gradients_across_ranks(params: list[nn.Parameter], accelerator) -> list[RemovableHandle]:
    """
    Make `params` (plain tensors beside FSDP2's shards) equal on every rank, then average their gradients across ranks
    whenever the Trainer steps (`accelerator.sync_gradients`): once per accumulation window, on the gradient summed over
    its micro-batches, which gives what averaging after every backward would. Returns the hooks' handles.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return []
    world_size = dist.get_world_size()

    def average(param: nn.Parameter) -> None:
        if accelerator.sync_gradients:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
            param.grad.div_(world_size)

    handles = []
    for param in params:
        with torch.no_grad():
            dist.broadcast(param.data, src=0)
        handles.append(param.register_post_accumulate_grad_hook(average))
    return handles


class ReplicatedAdapterGradients:
    """The gradient averaging of the current stage adapter under FSDP2: installed anew for every stage's training."""

    def __init__(self):
        self.handles: list[RemovableHandle] = []

    def install(self, model: nn.Module, accelerator, stage_adapters: bool) -> None:
        """Replace the hooks with ones on `model`'s trainable parameters, under FSDP2 with stage adapters."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if stage_adapters and fsdp2_enabled(accelerator):
            trainable = [param for param in model.parameters() if param.requires_grad]
            self.handles = average_gradients_across_ranks(trainable, accelerator)


def reshard(model: nn.Module) -> None:
    """
    Leave every FSDP2 module of `model` holding its shards (a forward of a module that does not reshard after forward,
    such as the root, leaves it holding the gathered weights): a transition writes into the shards.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def add_to_weight(weight: nn.Parameter, delta: torch.Tensor) -> None:
    """
    `weight += delta` in place, for a plain weight or an FSDP2 shard: each rank, holding the full `delta`, adds the
    rows of its own shard (`distribute_tensor` without communication), so that the sharded weight FSDP2 gathers from
    changes.
    """
    if is_sharded(weight):
        from torch.distributed.tensor import distribute_tensor

        shard = weight.data
        delta = distribute_tensor(
            delta.to(device=shard.to_local().device, dtype=shard.dtype),
            shard.device_mesh,
            shard.placements,
            src_data_rank=None,
        )
    weight.data.add_(delta.to(weight.dtype))


def full_values(weight: nn.Parameter) -> torch.Tensor:
    """The whole of `weight`: its own values, or, for an FSDP2 shard, every rank's shards gathered (a collective)."""
    return weight.data.full_tensor() if is_sharded(weight) else weight.data
