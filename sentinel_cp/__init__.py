"""Sentinel CP domain: plain Python contexts that the HTTP, console and job adapters call."""
