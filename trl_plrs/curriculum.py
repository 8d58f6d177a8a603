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
"""Pure functions that turn a curriculum configuration into a list of stages: levels, LoRA rank and alpha."""

import re


_LEVEL_PATTERN = re.compile(r"^\s*(?:level\s*)?(-?\d+)\s*$", re.IGNORECASE)


def parse_level(value) -> int | None:
    """
    Parse a curriculum level: an int, or a string such as `"3"` or `"Level 3"` (as MATH writes it).

    Returns `None` for values that name no level, such as MATH's `"Level ?"`, `None` or `""`.

    >>> parse_level("Level 3"), parse_level(2), parse_level("Level ?")
    (3, 2, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        match = _LEVEL_PATTERN.match(value)
        return int(match.group(1)) if match else None
    return None
