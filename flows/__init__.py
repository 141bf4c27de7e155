"""Prefect 3 flows: thin orchestration over :mod:`pipeline` and :mod:`training`.

Every flow is a plain Python function too (call it, or ``flow.fn(...)`` to bypass Prefect).
"""
