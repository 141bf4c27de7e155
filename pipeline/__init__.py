"""lesionflow's library: discovery, readers, geometry, resampling, normalisation, Zarr I/O,
quality metrics, patches and lesion tables. No orchestration imports live here."""

__version__ = "0.1.0"
