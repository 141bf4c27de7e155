"""Test-only hooks for subprocesses: put this folder first on ``PYTHONPATH`` and Python runs it at
start-up in the process and in every process it spawns (Dask workers included); without the
environment variables below it does nothing. The library itself carries no test hooks.

* ``LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S=<seconds>``: the local store backend sleeps before every
  object it writes while building a node in staging (group and array metadata, each chunk), so
  a case write is in flight long enough for a test to kill the process in the middle of it.

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


if os.environ.get("LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S"):
    _slow_chunk_writes(float(os.environ["LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S"]))
