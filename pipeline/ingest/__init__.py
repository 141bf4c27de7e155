"""Ingest: source folders → one case per subject session in the store.

:mod:`~pipeline.ingest.discover` (studies, series, sessions) → :mod:`~pipeline.ingest.modality`
(rules) → readers → :mod:`~pipeline.ingest.resample` (one grid per session) →
:mod:`~pipeline.ingest.normalize` → :mod:`~pipeline.ingest.session` (one session → one case),
run in parallel by :mod:`~pipeline.ingest.cluster` (Dask).
"""
