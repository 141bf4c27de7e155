"""Synthetic MRI cohorts with lesions of known volume (see :mod:`pipeline.phantom.cohort`)."""

from pipeline.phantom.cohort import FAULTS, CohortInfo, make_cohort  # noqa: F401
