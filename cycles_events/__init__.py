"""Webhook events dispatcher for the Cycles budget stack."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cycles-events")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

ARTIFACT = "cycles-server-events"
USER_AGENT = f"cycles-server-events/{__version__}"
