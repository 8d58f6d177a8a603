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
Test-only shim: FSDP2 on a CPU (gloo) multi-process run.

`accelerate.state.AcceleratorState` turns `ACCELERATE_USE_FSDP` (set by `accelerate launch` with `distributed_type:
FSDP`) into `DistributedType.FSDP` only for accelerator devices (GPU, XPU, NPU...); a CPU run stays
`DistributedType.MULTI_CPU` and silently trains as DDP-without-DDP. [`enable_fsdp_on_cpu`] wraps
`AcceleratorState.__init__` so that, on a multi-process CPU run given an FSDP plugin, the state records
`DistributedType.FSDP` (in the process state too, as accelerate does at the end of its own initialisation) and keeps
the plugin (with the mixed precision set, as accelerate does on GPUs). That is all it changes: everything after it is
accelerate's, transformers' and torch's real FSDP2 code (`fsdp2_prepare_model`, `fully_shard` over a gloo device mesh
of CPU DTensors, FSDP state-dict save and load, `clip_grad_norm_`).
"""

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def enable_fsdp_on_cpu() -> None:
    original_init = AcceleratorState.__init__
    if getattr(original_init, "_fsdp_on_cpu", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            # As `AcceleratorState.__init__` ends: every later `AcceleratorState()` copies the process state's type.
            PartialState._shared_state["distributed_type"] = self.distributed_type

    __init__._fsdp_on_cpu = True
    AcceleratorState.__init__ = __init__
