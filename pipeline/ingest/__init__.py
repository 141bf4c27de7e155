"""Ingest: source folders → one case per subject session in the store.

:mod:`~pipeline.ingest.discover` (studies, series, sessions) → :mod:`~pipeline.ingest.modality`
(rules) → readers → :mod:`~pipeline.ingest.resample` (one grid per session) →
:mod:`~pipeline.ingest.normalize` → :mod:`~pipeline.ingest.session` (one session → one case),
run in parallel by :mod:`~pipeline.ingest.cluster` (Dask). :mod:`~pipeline.ingest.incremental`
knows what the store already holds (nothing unchanged is read again);
:mod:`~pipeline.ingest.run` is the whole run as one function. An
:class:`~pipeline.ingest.context.IngestContext` (store, configuration, run id, force) goes with
every session.

Imports point one way: ``run`` → ``cluster`` → ``session`` → ``incremental`` → ``discover``.

Example::

    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    summary = run_ingest("/data/incoming", "/data/ms.zarr", PipelineConfig(), pseudonym_key())
"""

from pipeline.ingest.context import IngestContext
from pipeline.ingest.run import IngestSummary, run_ingest
from pipeline.ingest.session import SessionResult, convert_session

__all__ = ["IngestContext", "IngestSummary", "SessionResult", "convert_session", "run_ingest"]
