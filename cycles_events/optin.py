"""Opt-in switches: a deployment setting, overridden per subscription by a key of its metadata.

Contract section 9: behaviour beyond the reference service is off unless a setting or a key in
the subscription's `metadata` (stored and passed through by the admin API) turns it on. The rule
for every such key is the same: a value of the right type in the subscription's metadata wins,
whatever the setting says (so one subscription can opt in, or out, of a deployment's default);
anything else (absent, null, a wrong type, a string that is not a boolean or a number) leaves the
setting in force. Numbers are clamped into their documented range, as retry_policy values are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def metadata_of(subscription: Mapping[str, Any]) -> Mapping[str, Any]:
    """The subscription's metadata object, or an empty one."""
    raw = subscription.get("metadata")
    return raw if isinstance(raw, Mapping) else {}


def as_flag(value: Any) -> bool | None:
    """A JSON boolean, or a string spelling one (some admin clients store strings); else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def as_number(value: Any) -> float | None:
    """A finite JSON number, or a string holding one; else None (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def flag(metadata: Mapping[str, Any], key: str, setting: bool) -> bool:
    """The metadata key's boolean when it has one, else the setting."""
    found = as_flag(metadata.get(key))
    return setting if found is None else found


def number(metadata: Mapping[str, Any], key: str, setting: float, low: float, high: float) -> float:
    """The metadata key's number (clamped into [low, high]) when it has one, else the setting."""
    found = as_number(metadata.get(key))
    return setting if found is None else min(max(found, low), high)
