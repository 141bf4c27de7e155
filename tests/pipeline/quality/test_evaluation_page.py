"""pipeline.quality.evaluation_page: the volume plot leaves out cases without volumes (geometry unknown)."""

from __future__ import annotations

import math

from pipeline.quality.evaluation_page import volume_plot_png

PNG = b"\x89PNG"


def test_volume_plot_draws_the_cases_with_both_volumes():
    png = volume_plot_png([1.0, 2.0, 3.0], [1.1, 1.8, 3.3], 0.07, (-0.3, 0.4), 0.99)
    assert png is not None and png.startswith(PNG)


def test_volume_plot_skips_cases_without_volumes_and_draws_nothing_without_any():
    nan = math.nan
    mixed = volume_plot_png([1.0, nan, 3.0], [1.1, nan, nan], 0.1, (nan, nan))  # one usable pair
    assert mixed is not None and mixed.startswith(PNG)
    assert volume_plot_png([nan, nan], [nan, nan], nan, (nan, nan)) is None  # raised 'Axis limits cannot be NaN' before
