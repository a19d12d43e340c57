"""The URL policy in force, refreshed from config:webhook-security by maintenance."""

from __future__ import annotations

from cycles_events.urlguard import SecurityConfigError, SecurityPolicy


class PolicySource:
    """Holds the current URL policy; a config that cannot be judged makes it indeterminate."""

    def __init__(self, *, allow_private_networks: bool) -> None:
        self.allow_private_networks = allow_private_networks
        self.policy = SecurityPolicy.build(None, allow_private_networks=allow_private_networks)
        self.error: str | None = None  # why the stored config is indeterminate, while it is
        self.raw: bytes | None = None
        self.loaded = False

    def update(self, raw: bytes | None) -> None:
        """Judge a newly read config; one that cannot be judged holds every delivery."""
        if self.loaded and raw == self.raw:
            return
        try:
            self.policy = SecurityPolicy.from_stored(
                raw, allow_private_networks=self.allow_private_networks
            )
            self.error = None
        except SecurityConfigError as exc:
            self.error = str(exc)
        self.raw = raw
        self.loaded = True

    def current(self) -> SecurityPolicy:
        """The policy in force."""
        return self.policy
