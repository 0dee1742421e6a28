"""A small Stroop experiment that behaves like a Dallinger app (web, worker, clock, /launch)."""
