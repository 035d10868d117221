"""RQ adapters: thin job functions that call the domain.

The periodic schedule is `jobs/cron.py`.
"""

QUEUES = ("default", "maintenance")
