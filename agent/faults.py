"""What /health and /metrics say about the durable state: a data directory deleted or replaced under the agent,
damaged segments (per file kind), a registry that failed closed, subscriptions that cannot queue or send.

A damaged record whose twin survived (``copies=2``) or a torn tail (a write a crash interrupted, never
acknowledged) is shown but leaves the agent healthy; a record lost beyond repair, a lost data directory or an
outbox that cannot be written makes it degraded (503).
"""

from __future__ import annotations

from agent.store.segment import integrity


def storage_faults(agent) -> tuple[bool, dict]:
    root = agent.config.storage.path
    damage = integrity(root)
    delivery_ok, delivery = agent.delivery.health()
    lost_dir = agent.store.data_directory.problem()
    release_log = agent.releases.log.last_error  # retried with each flush; its noisy releases refused meanwhile
    ok = (delivery_ok and lost_dir is None and release_log is None
          and not any(tally["lost"] for tally in damage.values()))
    return ok, {"data_directory_lost": lost_dir, "damage": damage, "registry_failed_closed": agent.registry.damage,
                "release_log_error": release_log, "delivery": delivery}
