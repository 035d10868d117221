"""RQ adapters: thin job functions that call the domain.

The periodic schedule is `jobs/cron.py`; `jobs/queue.py` is the RQ side of the domain's
`jobqueue` door. Queues, most urgent first (a worker takes from the first non-empty one).
"""

QUEUES = ("compile", "default", "maintenance")
