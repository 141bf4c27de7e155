"""Stored cases as a BIDS-derivatives dataset, for clinical viewers (ITK-SNAP, 3D Slicer, FSLeyes) and BIDS tools.

``export_bids(store, OUT)`` writes ``OUT/derivatives/lesionflow/``::

    dataset_description.json                  DatasetType "derivative", GeneratedBy lesionflow <version>
    README.md, descriptions.tsv               what each ``desc-`` label means (model versions spelled out)
    phenotype/lesionflow_volumes.tsv (+.json) one row per (session, model): total lesion volume (mL), count
    phenotype/lesionflow_lesions.tsv (+.json) one row per lesion: volume (mm³), centroid (LPS mm), bounding box
    sub-<s>/ses-<t>/anat/
      sub-<s>_ses-<t>_desc-preproc_FLAIR.nii.gz (+.json)     each stored channel (T1w, T2w, PDw; T1POST as ce-gadolinium T1w)
      sub-<s>_ses-<t>_label-lesion_desc-reference_mask.nii.gz (+.json)   the reference lesion mask
      sub-<s>_ses-<t>_label-lesion_desc-<model>_mask.nii.gz (+.json)     each model's prediction

Every image is on the session's reference grid (the stored grid) and carries its exact affine:
:func:`pipeline.io.writers.write_nifti` writes sform and qform from the stored geometry through
:func:`pipeline.core.geometry.affine_ras`, the only LPS→RAS conversion (NIfTI keeps the sform in
float32: about 1e-5 mm). Channels are the stored values (z-scored within the foreground); the
sidecar gives the mean and SD that undo it. ``<model>`` is the model version with its
non-alphanumeric characters dropped (BIDS labels are alphanumeric); the sidecar's
``ModelVersion`` and ``descriptions.tsv`` give it in full.

Only pseudonyms leave the store: subject and session labels are the store's keyed hashes, the
lineage is digests (source SHA-256, source fingerprint, configuration hash, run id), never a
source path, series description or file name. Re-exporting into the same ``OUT`` replaces the
files of the cases exported again and merges the tables.

Example:
    >>> bids_label("unet3d-20250101T120000-1a2b3c4d"), entity_prefix("sub-4a13", "ses-1f2e")
    ('unet3d20250101T1200001a2b3c4d', ('sub-4a13_ses-1f2e', 'sub-4a13/ses-1f2e/anat'))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.atomic import atomic_path
from pipeline.io.writers import write_nifti, write_sidecar
from pipeline.store import (
    MODELS,
    StoreError,
    StoreLike,
    list_cases,
    list_dir,
    open_case,
    prediction_mask,
    prediction_versions,
    read_bytes,
    read_case_meta,
    read_table,
    reference_label,
    volume_from_geometry,
)
from storage_schemas.models import CaseMeta

PIPELINE = "lesionflow"
BIDS_VERSION = "1.10.0"
CHANNEL_SUFFIX: dict[str, tuple[str, str | None]] = {
    "FLAIR": ("FLAIR", None), "T1": ("T1w", None), "T1POST": ("T1w", "gadolinium"), "T2": ("T2w", None), "PD": ("PDw", None),
}
"""lesionflow modality → (BIDS anatomical suffix, ``ce-`` label). Other channels are not exported (listed as skipped)."""

MODEL_FIELDS = ("model_version", "created_at", "channels", "patch_zyx", "normalization", "train_config_hash", "config_hash",
                "weights_sha256", "lesionflow_version", "torch_version", "monai_version")
"""What a prediction's sidecar copies from ``models/<version>/model.json`` (no case lists, no paths)."""

VOLUME_COLUMNS = {
    "participant_id": "pseudonymised subject (keyed hash, as in the store)",
    "session_id": "pseudonymised session",
    "desc": "desc- label of the mask file (model version without its non-alphanumeric characters)",
    "model_version": "the lesionflow model that predicted the mask",
    "total_volume_ml": "total lesion volume, mL",
    "lesion_count": "number of connected lesions",
    "connectivity": "voxel connectivity of a lesion (6, 18 or 26)",
    "min_lesion_mm3": "lesions smaller than this were dropped, mm3",
    "voxel_volume_mm3": "volume of one voxel, mm3",
}
LESION_COLUMNS = {
    "participant_id": VOLUME_COLUMNS["participant_id"], "session_id": VOLUME_COLUMNS["session_id"], "desc": VOLUME_COLUMNS["desc"],
    "model_version": VOLUME_COLUMNS["model_version"],
    "lesion_id": "lesion number within the mask, largest first", "voxels": "voxels in the lesion", "volume_mm3": "lesion volume, mm3",
    "centroid_x_mm": "centroid, LPS x (patient left), mm", "centroid_y_mm": "centroid, LPS y (posterior), mm",
    "centroid_z_mm": "centroid, LPS z (superior), mm",
    "bbox_min_zyx": "inclusive voxel bounding box, first corner 'z,y,x'", "bbox_max_zyx": "inclusive voxel bounding box, last corner 'z,y,x'",
}


def bids_label(text: str) -> str:
    """``text`` as a BIDS label (alphanumeric only); ValueError when nothing is left."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(text))
    if not label:
        raise ValueError(f"{text!r} has no alphanumeric character for a BIDS label")
    return label


def entity_prefix(subject: str, session: str) -> tuple[str, str]:
    """``("sub-<s>_ses-<t>", "sub-<s>/ses-<t>/anat")`` of a case's pseudonymised subject and session."""
    sub = bids_label(subject.removeprefix("sub-"))
    ses = bids_label(session.removeprefix("ses-"))
    return f"sub-{sub}_ses-{ses}", f"sub-{sub}/ses-{ses}/anat"


def derivatives_root(out: str | Path) -> Path:
    """``OUT/derivatives/lesionflow``."""
    return Path(out) / "derivatives" / PIPELINE


def channel_filename(prefix: str, modality: str) -> str | None:
    """File name of a stored channel, None for a modality without a BIDS suffix."""
    suffix, ce = CHANNEL_SUFFIX.get(modality.upper(), (None, None))
    if suffix is None:
        return None
    return f"{prefix}{f'_ce-{ce}' if ce else ''}_desc-preproc_{suffix}.nii.gz"


def mask_filename(prefix: str, desc: str) -> str:
    """File name of a lesion mask (``desc`` is ``reference`` or a model's label)."""
    return f"{prefix}_label-lesion_desc-{bids_label(desc)}_mask.nii.gz"


def lineage(meta: CaseMeta) -> dict[str, Any]:
    """The case's lineage as digests and versions (no paths, no names)."""
    return {
        "case_id": meta.case_id,
        "source_fingerprint": meta.source_fingerprint,
        "source_sha256": sorted({s.sha256 for ci in meta.channel_info for s in ci.sources}),
        "label_source_sha256": meta.label_source.sha256 if meta.label_source else None,
        "config_hash": meta.config_hash,
        "pipeline_version": meta.pipeline_version,
        "run_id": meta.run_id,
        "converted_at": meta.created_at.isoformat(),
        "store_schema_version": meta.schema_version,
    }


def model_info(store_root: StoreLike, model_version: str) -> dict[str, Any] | None:
    """The exportable fields of ``models/<version>/model.json``; None when the store does not hold the model."""
    blob = read_bytes(store_root, f"{MODELS}/{model_version}/model.json")
    if blob is None:
        return None
    info = json.loads(blob)
    return {k: info[k] for k in MODEL_FIELDS if k in info}


def resolve_models(store_root: StoreLike, requested: Sequence[str] | None) -> list[str] | None:
    """``requested`` with ``latest`` replaced by the store's newest model (by ``created_at``); None stays None (all)."""
    if requested is None:
        return None
    out: list[str] = []
    for name in requested:
        if name == "latest":
            infos = [i for i in (model_info(store_root, v) for v in list_dir(store_root, MODELS)) if i and i.get("model_version")]
            if not infos:
                raise StoreError("--model latest: the store holds no model")
            name = max(infos, key=lambda i: (str(i.get("created_at", "")), i["model_version"]))["model_version"]
        out.append(name)
    return out


def _sidecar(path: Path, payload: dict[str, Any]) -> Path:
    sidecar = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
    write_sidecar({k: v for k, v in payload.items() if v is not None}, sidecar)
    return sidecar


def export_case(store_root: StoreLike, case_id: str, out: str | Path, models: Sequence[str] | None = None, channels: bool = True,
                threads: int = 1) -> dict[str, Any]:
    """Write one case's channels, reference label and predictions (``models``; None: every model
    that scored it) under ``OUT/derivatives/lesionflow/sub-*/ses-*/anat/``.

    Returns ``{"case_id", "participant_id", "session_id", "files" (paths relative to the
    derivative root), "models" (exported), "skipped" (one line each)}``.
    """
    meta = read_case_meta(store_root, case_id)
    group = open_case(store_root, case_id)
    root = derivatives_root(out)
    prefix, rel = entity_prefix(meta.subject, meta.session)
    dest = root / rel
    base = lineage(meta)
    files: list[str] = []
    skipped: list[str] = []

    def write(name: str, array: np.ndarray, sidecar: dict[str, Any]) -> None:
        path = dest / name
        write_nifti(volume_from_geometry(meta.geometry, array), path, threads=threads)
        files.extend([f"{rel}/{name}", f"{rel}/{_sidecar(path, sidecar).name}"])

    sources: dict[str, str] = {}
    info = {ci.modality: ci for ci in meta.channel_info}
    for i, modality in enumerate(meta.channels):
        name = channel_filename(prefix, modality)
        if name is None:
            skipped.append(f"{case_id}: channel {modality} has no BIDS suffix; not exported")
            continue
        sources[modality] = f"bids::{rel}/{name}"
        if not channels:
            continue
        ci = info.get(modality)
        write(name, np.asarray(group["image"][i], np.float32), {
            "Description": f"{modality} on the session's reference grid, z-scored within the foreground "
                           "(original intensity = value x IntensitySD + IntensityMean)",
            "SkullStripped": False,
            "lesionflow": {"channel": modality, "present": ci.present if ci else None,
                           "IntensityMean": ci.intensity_mean if ci else None, "IntensitySD": ci.intensity_std if ci else None,
                           "source_format": ci.source_format if ci else None,
                           "native_spacing_mm": list(ci.native_spacing) if ci else None,
                           "native_shape_zyx": list(ci.native_shape_zyx) if ci else None, **base},
        })
    mask_sources = sorted(sources.values()) if channels else None

    label = reference_label(group)
    if label is not None:
        write(mask_filename(prefix, "reference"), np.asarray(label[...], np.uint8), {
            "Type": "Lesion",
            "Description": "reference lesion mask supplied with the source, on the session's reference grid",
            "Sources": mask_sources,
            "lesionflow": {"mask": "reference", **base},
        })

    have = prediction_versions(group)
    wanted = have if models is None else list(models)
    exported: list[str] = []
    for version in wanted:
        arr = prediction_mask(group, version) if version in have else None
        if arr is None:
            skipped.append(f"{case_id}: not scored by {version}")
            continue
        pred_attrs = arr.attrs.asdict().get("lesionflow_prediction")
        used = (pred_attrs or {}).get("channels") or meta.channels
        write(mask_filename(prefix, version), np.asarray(arr[...], np.uint8), {
            "Type": "Lesion",
            "Description": f"lesion mask predicted by lesionflow model {version}",
            "ModelVersion": version,
            "Sources": sorted(sources[c] for c in used if c in sources) if channels else None,
            "lesionflow": {"mask": "prediction", "model_version": version,
                           **({"model": model} if (model := model_info(store_root, version)) else {}),
                           **({"prediction": pred_attrs} if pred_attrs else {}), **base},
        })
        exported.append(version)
    return {"case_id": case_id, "participant_id": prefix.split("_")[0], "session_id": prefix.split("_")[1],
            "files": files, "models": exported, "skipped": skipped}


# ------------------------------------------------------------------------------- dataset files
def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _merge_tsv(path: Path, new: Any, keys: list[str], sort: list[str]) -> Any:
    """``new`` rows replacing the rows of ``path`` with the same ``keys``; written as TSV (n/a for missing)."""
    import pandas as pd

    if path.exists():
        old = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if len(new):
            done = set(map(tuple, new[keys].astype(str).to_numpy()))
            old = old[[tuple(r) not in done for r in old[keys].astype(str).to_numpy()]]
        new = pd.concat([old, new.astype(object)], ignore_index=True) if len(old) else new
    new = new.sort_values(sort, kind="stable") if len(new) else new
    with atomic_path(path, ".tsv") as tmp:
        new.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    return new


def _table_rows(store_root: StoreLike, exports: list[dict[str, Any]]) -> tuple[Any, Any]:
    """(volume rows, lesion rows) of the exported (case, model) pairs: the store's tables, or computed
    from the masks where a pair is missing from them."""
    import pandas as pd

    from pipeline.lesions.tables import case_lesion_rows

    pairs = {(e["case_id"], v): e for e in exports for v in e["models"]}
    vol, les = read_table(store_root, "case_volumes"), read_table(store_root, "lesions")
    vol_rows: list[dict[str, Any]] = []
    les_rows: list[dict[str, Any]] = []
    for (case_id, version), e in sorted(pairs.items()):
        ids = {"participant_id": e["participant_id"], "session_id": e["session_id"], "desc": bids_label(version)}
        stored_v = vol[(vol["case_id"] == case_id) & (vol["model_version"] == version)] if vol is not None else []
        if len(stored_v):
            case_row = stored_v.iloc[-1].to_dict()
            lesions = les[(les["case_id"] == case_id) & (les["model_version"] == version)].to_dict("records") if les is not None else []
        else:
            computed = case_lesion_rows(store_root, case_id, version)
            if computed is None:
                continue
            case_row, lesions = computed
        vol_rows.append({**ids, **{k: case_row.get(k) for k in list(VOLUME_COLUMNS)[3:]}})
        les_rows.extend({**ids, **{k: r.get(k) for k in list(LESION_COLUMNS)[3:]}} for r in lesions)
    return pd.DataFrame(vol_rows, columns=list(VOLUME_COLUMNS)), pd.DataFrame(les_rows, columns=list(LESION_COLUMNS))


def write_dataset_files(store_root: StoreLike, out: str | Path, exports: list[dict[str, Any]]) -> list[str]:
    """The dataset-level files of an export (``dataset_description.json``, ``README.md``,
    ``descriptions.tsv``, the phenotype tables), merged with what ``OUT`` already holds.
    Returns their paths relative to the derivative root."""
    import pandas as pd

    root = derivatives_root(out)
    root.mkdir(parents=True, exist_ok=True)
    write_sidecar({
        "Name": "lesionflow lesion masks",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": PIPELINE, "Version": __version__,
                         "Description": "raw MRI/CT folders -> pseudonymised Zarr store -> 3-D U-Net lesion masks and volumes"}],
    }, root / "dataset_description.json")
    _write_text(root / "README.md",
                "# lesionflow lesion masks\n\nExported by `lesionflow export` from a lesionflow store. Every image is on its "
                "session's reference grid with the exact affine. `desc-preproc`: the stored channel (z-scored within the "
                "foreground); `label-lesion_desc-reference_mask`: the reference mask supplied with the source; "
                "`label-lesion_desc-<model>_mask`: a model's prediction (see descriptions.tsv and each sidecar's ModelVersion). "
                "Lesion volumes and lesions: phenotype/. Subjects and sessions are pseudonyms.\n")
    descs = [{"desc_id": "preproc", "description": "stored channel on the reference grid, z-scored within the foreground"},
             {"desc_id": "reference", "description": "reference lesion mask supplied with the source"}]
    descs += [{"desc_id": bids_label(v), "description": f"lesion mask predicted by lesionflow model {v}"}
              for v in sorted({v for e in exports for v in e["models"]})]
    _merge_tsv(root / "descriptions.tsv", pd.DataFrame(descs), ["desc_id"], ["desc_id"])
    volumes, lesions = _table_rows(store_root, exports)
    pheno = root / "phenotype"
    keys = ["participant_id", "session_id", "model_version"]
    _merge_tsv(pheno / "lesionflow_volumes.tsv", volumes, keys, keys)
    _merge_tsv(pheno / "lesionflow_lesions.tsv", lesions, keys, [*keys, "lesion_id"])
    for name, columns, what in (("lesionflow_volumes", VOLUME_COLUMNS, "total lesion volume per session and model"),
                                ("lesionflow_lesions", LESION_COLUMNS, "one row per predicted lesion")):
        write_sidecar({"MeasurementToolMetadata": {"Description": f"lesionflow {__version__}: {what}"},
                       **{c: {"Description": d} for c, d in columns.items()}}, pheno / f"{name}.json")
    return ["dataset_description.json", "README.md", "descriptions.tsv", "phenotype/lesionflow_volumes.tsv",
            "phenotype/lesionflow_volumes.json", "phenotype/lesionflow_lesions.tsv", "phenotype/lesionflow_lesions.json"]


@dataclass
class ExportSummary:
    """What :func:`export_bids` wrote."""

    root: Path
    cases: list[dict[str, Any]] = field(default_factory=list)
    dataset_files: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [*self.dataset_files, *(f for c in self.cases for f in c["files"])]

    @property
    def skipped(self) -> list[str]:
        return [s for c in self.cases for s in c["skipped"]]

    def as_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "cases": len(self.cases), "files": len(self.files),
                "models": sorted({v for c in self.cases for v in c["models"]}), "skipped": self.skipped}


def export_bids(store_root: StoreLike, out: str | Path, case_ids: Sequence[str] | None = None, models: Sequence[str] | None = None,
                channels: bool = True, threads: int = 1) -> ExportSummary:
    """Export ``case_ids`` (default: every case) with the predictions of ``models`` (a version or
    ``latest``; default: every model that scored the case) to ``OUT/derivatives/lesionflow``.

    Raises :class:`~pipeline.store.StoreError` for a case that is not in the store.
    """
    ids = list(case_ids) if case_ids else list_cases(store_root)
    wanted = resolve_models(store_root, models)
    exports = [export_case(store_root, c, out, wanted, channels=channels, threads=threads) for c in ids]
    return ExportSummary(derivatives_root(out), exports, write_dataset_files(store_root, out, exports))
