"""`python -m cycles_events.demo`: the same as `make demo`."""

from cycles_events.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
