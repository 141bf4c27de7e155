"""pipeline.prepare.preview and `lesionflow augment-preview`: the bank drawn as a PNG grid; the report's section."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.prepare.augment import BankConfig
from pipeline.prepare.bank import build_bank
from pipeline.prepare.preview import bank_grid
from tests.store_factory import make_store


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview") / "s.zarr"
    cases = make_store(root, n_cases=2, shape_zyx=(32, 40, 36), seed=2)
    build_bank(root, cases[0], BankConfig(samples_per_case=6, patch_zyx=(20, 24, 16)))
    return root, cases


def test_grid_has_a_tile_per_sample_and_red_outlines(banked):
    root, cases = banked
    grid = bank_grid(root, cases[0], n_samples=6, columns=3, tile_px=40)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 40 + 2, 3 * 27 + 2 * 2, 3)  # tiles keep the 24 x 16 (y, x) aspect
    red = (grid[..., 0] > 200) & (grid[..., 1] < 80)
    assert red[:40].any(), "the lesion-centred samples come first and show their outline"
    assert grid.std() > 10


def test_cli_writes_a_png_and_refuses_a_case_without_a_bank(banked, tmp_path):
    from typer.testing import CliRunner

    from lesionflow.cli import app

    root, cases = banked
    out = tmp_path / "preview" / "grid.png"
    res = CliRunner().invoke(app, ["augment-preview", "--store", str(root), "--case", cases[0], "--out", str(out), "--samples", "4"])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 200
    assert "4 of 6 samples" in res.output
    res = CliRunner().invoke(app, ["augment-preview", "--store", str(root), "--case", cases[1], "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "no augmentation bank" in res.output and "lesionflow prepare" in res.output


def test_the_report_section_shows_one_grid_and_the_sizes(banked):
    from pipeline.quality.report import _bank_section

    root, cases = banked
    section = _bank_section(root, cases)
    assert section["case_id"] == cases[0] and section["png_b64"]
    assert [r["case_id"] for r in section["rows"]] == [cases[0]] and section["rows"][0]["mb"] > 0
    assert _bank_section(root, cases[1:]) is None
