"""Test-only hooks for subprocesses: put this folder first on ``PYTHONPATH`` and Python runs it at
start-up in the process and in every process it spawns (Dask workers included); without the
environment variables below it does nothing. The library itself carries no test hooks.

* ``LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S=<seconds>``: the local store backend sleeps before every
  object it writes while building a node in staging (group and array metadata, each chunk), so
  a case write is in flight long enough for a test to kill the process in the middle of it.
* ``LESIONFLOW_TEST_POISON_SESSIONS='{"<folder name>": "oom" | "crash", ...}'``: sessions whose
  folder has one of these names kill the Dask worker converting them
  (:func:`tests.session_factory.convert_or_poison`: allocating past the worker's memory limit, or
  exiting as a native crash would), for end-to-end tests and benchmarks of poisoned sessions
  through the command line (``tests.hostile_factory.poison_env``). The other sessions convert as usual.

Example (in a test)::

    env = {**os.environ, "PYTHONPATH": f"{HOOKS}{os.pathsep}{REPO}", "LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S": "0.5"}
    subprocess.Popen([sys.executable, "-m", "lesionflow.cli", "ingest", ...], env=env)
"""

from __future__ import annotations

import os


def _slow_chunk_writes(delay_s: float) -> None:
    import asyncio

    import zarr.storage

    from pipeline.store.backend.local import LocalBackend

    class SlowStore(zarr.storage.LocalStore):
        async def set(self, key, value):  # type: ignore[no-untyped-def]
            await asyncio.sleep(delay_s)
            await super().set(key, value)

    LocalBackend._scratch_store = lambda self, staging: SlowStore(str(staging))  # type: ignore[method-assign]


def _poison_sessions(victims: dict[str, str]) -> None:
    """Patch ``pipeline.ingest.cluster.convert_session`` when (and only if) a process imports that
    module: the process that submits the sessions. The workers unpickle the patched function by
    reference; nothing else is imported into processes that do not need it (Prefect's server,
    the workers' start-up), so the hook does not change their memory."""
    import functools
    import importlib.abc
    import importlib.util
    import sys

    target = "pipeline.ingest.cluster"

    class Patch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_module=None):  # type: ignore[no-untyped-def]
            if name != target:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            loader = spec.loader
            exec_module = loader.exec_module

            def patched(module):  # type: ignore[no-untyped-def]
                exec_module(module)
                from tests.session_factory import convert_or_poison

                module.convert_session = functools.partial(convert_or_poison, victims=victims)

            loader.exec_module = patched  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Patch())


if os.environ.get("LESIONFLOW_TEST_POISON_SESSIONS"):
    import json

    _poison_sessions(json.loads(os.environ["LESIONFLOW_TEST_POISON_SESSIONS"]))

if os.environ.get("LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S"):
    _slow_chunk_writes(float(os.environ["LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S"]))
