"""Lesions: connected components and per-lesion rows (:mod:`~pipeline.lesions.components`),
lesion-volume tables from stored masks (:mod:`~pipeline.lesions.tables`) and evaluation against
reference labels (:mod:`~pipeline.lesions.evaluation`)."""
