"""Data quality: image-quality metrics (:mod:`~pipeline.quality.metrics`), Great Expectations
suites run over the catalog and the cases (:mod:`~pipeline.quality.expectations`) and the
offline HTML report (:mod:`~pipeline.quality.report`)."""
