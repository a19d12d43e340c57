"""Test shim: a process started with this folder on PYTHONPATH sees its wall clock skewed.

CYCLES_TEST_CLOCK_SKEW_S seconds are added to time.time() (negative: the clock is behind), as
on a host whose NTP is off; monotonic time is untouched, as it is on such a host.
"""

import os
import time

_SKEW = float(os.environ.get("CYCLES_TEST_CLOCK_SKEW_S", "0") or 0)
if _SKEW:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _SKEW
    time.time_ns = lambda: _time_ns() + int(_SKEW * 1e9)
