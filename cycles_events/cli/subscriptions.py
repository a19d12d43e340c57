"""The `subscriptions enable` command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cycles_events.cli.common import EXIT_OK, emit, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def cmd_subscriptions_enable(args: argparse.Namespace) -> int:
    """Re-enable a subscription as an admin PATCH to ACTIVE does."""
    from cycles_events import ops

    async def run(redis: Redis, settings: Settings) -> int:
        res = await ops.enable_subscription(
            redis, args.subscription_id, event_ttl_s=settings.event_ttl_days * 86400
        )
        if not res.changed:
            text = f"{res.subscription_id} is already ACTIVE with no consecutive failures"
        else:
            text = (
                f"{res.subscription_id}: {res.previous_status} -> ACTIVE, consecutive_failures "
                f"{res.previous_failures} -> 0"
            )
            if res.event_id:
                text += f"; saved webhook.resumed event {res.event_id}"
        data = {
            "subscription_id": res.subscription_id,
            "previous_status": res.previous_status,
            "previous_consecutive_failures": res.previous_failures,
            "changed": res.changed,
            "event_id": res.event_id,
        }
        emit(args, data, text)
        return EXIT_OK

    return with_redis(run)
