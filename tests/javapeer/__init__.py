"""An independent Java-protocol peer (cycles-server-events v0.1.25.24) for migration tests.

Written from the contract alone (section 10 in particular); it never imports `cycles_events`.
"""

# Left out on purpose (the peer is a protocol double, not a second dispatcher):
# - URL policy is only "http/https with a host": no SSRF ranges, no config:webhook-security;
# - no metrics, no payload-shape checks (they never change an outcome), no retention pass;
# - an event or subscription JSON that does not parse counts as not found.

from tests.javapeer.options import PeerOptions, parse_args, to_args
from tests.javapeer.outbox import Publisher
from tests.javapeer.peer import JavaPeer, PeerKilled
from tests.javapeer.process import PeerProcess
from tests.javapeer.records import decrypt_secret, derive_event_id, encrypt_secret, sign

__all__ = [
    "JavaPeer",
    "PeerKilled",
    "PeerOptions",
    "PeerProcess",
    "Publisher",
    "decrypt_secret",
    "derive_event_id",
    "encrypt_secret",
    "parse_args",
    "sign",
    "to_args",
]
