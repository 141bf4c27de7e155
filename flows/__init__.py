"""Prefect 3 flows: thin orchestration over :mod:`pipeline` and :mod:`training`.

Every flow is a plain Python function too (call it, or ``flow.fn(...)`` to bypass Prefect).
"""

import os

# Set before any flow module imports Prefect: the ephemeral API takes 10-20 s to start on a
# small machine, and a hospital network should not be asked to send telemetry.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.common import route_library_logs  # after the environment above

route_library_logs()
