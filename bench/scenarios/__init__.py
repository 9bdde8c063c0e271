"""One module per scenario; each has ``run(env, quick) -> dict`` (JSON-able)."""
