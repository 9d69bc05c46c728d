"""Stand-in runner that fails, to test that run_all keeps going and reports it."""

raise SystemExit(3)
