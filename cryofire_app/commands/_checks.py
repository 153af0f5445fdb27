"""Range checks of command-line arguments: one line naming the option, what is allowed and what was given.

Each raises `InputError` (exit status 2, no traceback); the commands call them before doing any work. `cryofire train`
checks through `TrainConfig.validate` instead, the one place the GUI and the Python API share.
"""
from __future__ import annotations

import math
from typing import Any

from cryofire_app.io.errors import InputError


def at_least(flag: str, value: Any, lo: float, what: str = "", none_ok: bool = True) -> None:
    """`value` (int or float) is >= lo (None passes when none_ok)."""
    if value is None and none_ok:
        return
    if value is None or not math.isfinite(value) or value < lo:
        raise InputError(f"{flag} must be >= {lo:g}{what}, got {value!r}")


def above(flag: str, value: Any, lo: float, what: str = "", none_ok: bool = True) -> None:
    """`value` is finite and > lo."""
    if value is None and none_ok:
        return
    if value is None or not math.isfinite(value) or value <= lo:
        raise InputError(f"{flag} must be > {lo:g}{what}, got {value!r}")


def within(flag: str, value: Any, lo: float, hi: float, what: str = "", none_ok: bool = True) -> None:
    """lo <= value <= hi."""
    if value is None and none_ok:
        return
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{flag} must lie in [{lo:g}, {hi:g}]{what}, got {value!r}")


def even_box(flag: str, value: Any, none_ok: bool = True) -> None:
    """An even box size >= 8 pixels."""
    if value is None and none_ok:
        return
    if value is None or value < 8 or value % 2:
        raise InputError(f"{flag} must be an even number of pixels >= 8, got {value!r}")


def device(flag: str, value: str) -> None:
    """auto, cpu, cuda or cuda:N naming a device torch can see."""
    from cryofire_app.training.config import check_device

    try:
        check_device(value, key="device")
    except InputError as exc:
        raise InputError(str(exc).replace("--device (device)", flag, 1)) from None
