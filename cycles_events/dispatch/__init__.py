"""The dispatch pipeline: claim, intake, per-subscription gate, send workers, recorder."""
