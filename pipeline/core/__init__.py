"""The core every stage builds on: the one image type (:mod:`~pipeline.core.volume`), the only
LPS↔RAS code (:mod:`~pipeline.core.geometry`), the typed configuration
(:mod:`~pipeline.core.config`), keyed pseudonyms (:mod:`~pipeline.core.pseudonym`), sealed source
paths (:mod:`~pipeline.core.lineage`), clean descriptors (:mod:`~pipeline.core.descriptors`) and
the one JSON sanitiser (:mod:`~pipeline.core.jsonable`).
Imports nothing from the other stages."""
