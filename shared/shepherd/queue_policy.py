"""How the status-check queue retries a delivery that on_timer refused (a 5xx): without limit,
with backoff doubling from 0.1 s and capped at the default status_check_max, as LUCI's timer
queue retries forever. terraform/tasks.tf, the queue the Cloud Tasks adapter creates on the
emulator, and the embedded queue all follow it (tests/test_terraform.py checks terraform).
"""

from __future__ import annotations

from .durations import MILLISECOND, MINUTE

MAX_ATTEMPTS = -1  # Cloud Tasks' "unlimited"
MIN_BACKOFF_NS = 100 * MILLISECOND
MAX_BACKOFF_NS = 10 * MINUTE
MAX_DOUBLINGS = 13  # 0.1 s × 2^13 passes 10 min: the backoff doubles all the way to the cap


def backoff_ns(attempts: int) -> int:
    """The wait before the next delivery, after `attempts` failed ones."""
    return min(MIN_BACKOFF_NS << min(attempts, MAX_DOUBLINGS), MAX_BACKOFF_NS)
