"""Webhook events dispatcher for the Cycles budget stack."""

import os
import time
from importlib.metadata import PackageNotFoundError, distribution, version

try:
    __version__ = version("cycles-events")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

ARTIFACT = "cycles-server-events"
USER_AGENT = f"cycles-server-events/{__version__}"


def _build_time() -> str:
    """When this package was built into its environment: its installed metadata's time."""
    try:
        dist = distribution("cycles-events")
        metadata = next(f for f in dist.files or () if f.name == "METADATA")
        stamp = os.path.getmtime(str(dist.locate_file(metadata)))
    except (PackageNotFoundError, StopIteration, OSError):
        stamp = os.path.getmtime(__file__)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


BUILD_TIME = _build_time()
