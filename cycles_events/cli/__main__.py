"""`python -m cycles_events.cli`: the same as the `cycles-events` console script."""

from cycles_events.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
