"""RQ adapters: thin job functions that call the domain, and the periodic schedule (`jobs/cron.py`)."""

QUEUES = ("default", "maintenance")
