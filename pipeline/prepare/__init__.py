"""Training-data preparation: the seeded, class-balanced patch index
(:mod:`~pipeline.prepare.patches`)."""
