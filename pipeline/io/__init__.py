"""File formats in and out: the reader family (:mod:`pipeline.io.readers`: DICOM series, NIfTI,
MetaImage), NIfTI + JSON sidecar writers (:mod:`~pipeline.io.writers`) and the dcm2niix-style
tree conversion (:mod:`~pipeline.io.convert`). Knows nothing of the store."""
