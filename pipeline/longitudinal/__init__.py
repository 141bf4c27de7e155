"""Longitudinal change: a subject's visits in one space and the lesion change between them.

* :mod:`~pipeline.longitudinal.register`: supplied transforms composed exactly, or SimpleITK
  rigid-then-affine registration (Mattes MI on FLAIR); normalised cross-correlation as quality.
* :mod:`~pipeline.longitudinal.subtraction`: change without a model, from the FLAIR difference.
* :mod:`~pipeline.longitudinal.run`: every visit pair of a store → change masks and tables.

The classification of tracked lesions (new, enlarging, shrinking, disappeared, stable) and the
evaluation against an expert change mask are lesion measures: :mod:`pipeline.lesions.change`.
"""

from pipeline.longitudinal.register import register_rigid_affine
from pipeline.longitudinal.run import LESIONS_TABLE, METHODS, PAIRS_TABLE, change_pair, run_change, visit_pairs
from pipeline.longitudinal.subtraction import SubtractionConfig, subtraction_change

__all__ = ["LESIONS_TABLE", "METHODS", "PAIRS_TABLE", "SubtractionConfig", "change_pair", "register_rigid_affine", "run_change",
           "subtraction_change", "visit_pairs"]
