"""Ceilings on what one input may make a reader allocate: :class:`ReadLimits`.

Every reader (:mod:`pipeline.io.readers`) compares what a header *declares* (matrix size,
sample type, number of frames or files) against these ceilings, and against the size of the
file itself, before it allocates or decompresses anything; a violation is a
``ReaderError(code="too_large")`` whose reason names the limit and how to raise it.

The model lives here, in the core, because :class:`~pipeline.core.config.PipelineConfig`
carries it (field ``read_limits``, a runtime knob: not part of the processing hash); the
readers' checks are in :mod:`pipeline.io.readers.limits`, which re-exports it.

Defaults, chosen against the real data in ``../shared/data`` (largest: a 192x512x512 int16
mask, 50.3 M voxels, 100 MiB; largest series: 150 files) and common clinical extremes:

* ``max_voxels`` = 2**29 (536,870,912): 10.7x the largest real volume; a 512x512x2048
  thin-slice CT fits exactly.
* ``max_bytes`` = 4 GiB of decompressed voxel data per input: ``max_voxels`` at 8 bytes
  (float64) per voxel.
* ``max_files`` = 10,000 files in one DICOM series: a 4-D series of 150 files (dcm_qa_nih)
  and a 2,048-slice CT are far below; a single-frame fMRI of more than 10,000 images is
  refused (4-D inputs are not used for structural scans anyway).

Example:
    >>> ReadLimits().max_voxels
    536870912
    >>> ReadLimits(max_voxels=2**30).max_voxels
    1073741824
    >>> ReadLimits.model_validate_json('{"max_files": 20000}').max_files
    20000
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GIB = 1 << 30


class ReadLimits(BaseModel):
    """Per-input ceilings checked by every reader before it allocates (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_voxels: int = Field(1 << 29, gt=0, description="voxels in one volume (all frames / time points together)")
    max_bytes: int = Field(4 * GIB, gt=0, description="decompressed voxel-data bytes of one input (file or series), as stored")
    max_files: int = Field(10_000, gt=0, description="files in one DICOM series")


DEFAULT_READ_LIMITS = ReadLimits()
"""The limits readers use when none are passed (``limits=None``)."""
