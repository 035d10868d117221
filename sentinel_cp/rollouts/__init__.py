"""Rollouts: planning, gates and the tick engine."""
