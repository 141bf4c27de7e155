"""Getting cases out of the store to where people look at them.

* :mod:`pipeline.export.bids`: a BIDS-derivatives tree (NIfTI on the session's reference grid with
  the exact affine, JSON sidecars with model version and lineage, ``dataset_description.json``,
  lesion tables as TSV) for ITK-SNAP, 3D Slicer, FSLeyes and BIDS tools (``lesionflow export``).
* :mod:`pipeline.export.show`: one PNG of a case, orthogonal slices of each channel with the
  reference label and a prediction outlined (``lesionflow show``).

The case groups themselves are OME-Zarr 0.5 images with labels (:mod:`pipeline.store.ngff`), so
NGFF viewers (napari with napari-ome-zarr, neuroglancer) open the store directly.
"""

from pipeline.export.bids import ExportSummary, export_bids, export_case, write_dataset_files
from pipeline.export.show import render_case

__all__ = ["ExportSummary", "export_bids", "export_case", "render_case", "write_dataset_files"]
