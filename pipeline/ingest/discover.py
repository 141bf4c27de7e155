"""Discover studies (subject sessions) under a source folder.

Rules, in order:

* **DICOM** is found by content (the ``DICM`` preamble), never by extension, and grouped into
  series (see :mod:`pipeline.io.readers.dicom`), series into sessions by StudyInstanceUID, sessions
  into subjects by PatientID. A study's *root* is the deepest folder holding all its files.
* **NIfTI / MetaImage** files are grouped by folder. BIDS entities in the path (``sub-*``,
  ``ses-*``) name subject and session; otherwise the folder name is the subject. Files in the
  root folder of a DICOM study (e.g. a lesion mask next to the series folders) join that study.
  When one folder holds several files of the same modality (``study1_FLAIR``, ``study2_FLAIR``)
  it is split into sessions by the file-name prefix before the modality.
* **Numbered 2-D slice stacks** (``<stem>_<n>.tif`` + ``<stem>_<n>_mask.tif``,
  :mod:`pipeline.io.readers.slicestack`): one session per (folder, stem), the folder name as the
  subject; one item per colour plane, its modality from ``config.slice_stack.planes``, and one
  ``MASK`` item of the mask slices. A ``.tif`` that is not a numbered slice is rejected.
* ITK transform files ``<image stem>_*to_<REF>*.txt|.tfm`` next to an image are attached to it
  (registration of that image onto the reference modality).
* Everything found is accounted for: unmapped, 4-D, localizer and derived series become items
  with an ``unused`` reason; unreadable files become ``rejected`` items with the reason. Every
  reason comes with its :class:`~storage_schemas.models.ReasonCode` (``unused_code``, ``Rejected.code``).

Identifiers (PatientID, StudyInstanceUID, folder names) are pseudonymised here, with the keyed
hash, and every path is sealed (:mod:`pipeline.core.lineage`) beside the plain one the readers
need: what leaves this module for the store, the catalog and messages is the pseudonyms, the
sealed paths (``SourceItem.sealed``, ``Rejected.sealed``…) and descriptions cleaned by
:func:`~pipeline.core.descriptors.clean_descriptor`; the plain paths and the raw header text
stay in memory (the modality rules read the raw text). The reasons of rejected inputs name files
by their sealed path (:func:`~pipeline.core.lineage.scrub`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.descriptors import clean_descriptor
from pipeline.core.lineage import Lineage, lineage, scrub, stat_tag
from pipeline.core.pseudonym import pseudonymise
from pipeline.ingest.modality import Unusable, modality_of_filename, modality_of_series, strip_extension, unusable_series
from pipeline.io.readers.dicom import scan_series_parallel
from pipeline.io.readers.slicestack import is_slice_file, parse_slice_name, sort_slices
from storage_schemas.models import ReasonCode

log = logging.getLogger("lesionflow.ingest.discover")

IGNORED_SUFFIXES = {".raw", ".zraw", ".json", ".txt", ".tfm", ".csv", ".tsv", ".md", ".pdf", ".html", ".py", ".xml", ".log", ".bval", ".bvec", ".png", ".jpg"}
UNSUPPORTED_IMAGE_SUFFIXES = {".nrrd", ".nhdr", ".mgz", ".mgh", ".hdr", ".img", ".gipl", ".vtk", ".npy", ".npz", ".h5"}
IGNORED_NAMES = {"DICOMDIR", "LICENSE", "README", ".DS_Store", "Thumbs.db"}


@dataclass(repr=False)
class SourceItem:
    """One input of a session: a DICOM series or an image file.

    ``relpaths``, ``paths`` and ``series`` are identifying (plain paths, raw headers): memory
    only. What is stored or shown: ``name``, ``sealed``, ``sealed_files``, ``series_description``.
    """

    kind: str  # "dicom" | "nifti" | "metaimage" | "slicestack"
    name: str  # display name, never PHI: the sealed path for files, "series <n> <clean description>" for DICOM
    relpaths: list[str]  # relative to the ingest root (memory only)
    paths: list[Path]
    modality: str | None = None
    unused_reason: str | None = None  # set together with unused_code: why the item is left unused
    unused_code: ReasonCode | None = None
    series: Any = None  # pipeline.io.readers.dicom.DicomSeries for DICOM items
    transform: Path | None = None  # ITK transform mapping reference-space points into this image
    series_description: str | None = None  # cleaned (clean_descriptor)
    sealed: str = ""  # the sealed catalog path: the file, or the series' folder + "/" for a multi-file DICOM series
    sealed_files: list[str] = field(default_factory=list)  # sealed relpaths, parallel to relpaths
    sealed_transform: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # other plain names of its files (a missing MetaImage data file) → sealed
    plane: int | None = None  # slice stacks: the colour plane (0-based) this item reads
    slice_stack: Any = None  # slice stacks: the SliceStackConfig (spacing, mask suffix)

    def __repr__(self) -> str:  # without paths or raw text: safe in logs and error reports
        return f"SourceItem({self.kind}, {self.name!r}, modality={self.modality}, files={len(self.paths)}, unused={self.unused_code})"

    def replacements(self) -> dict[str, str]:
        """Plain path, relpath and file name of each of its files → sealed path (for :func:`scrub`)."""
        out: dict[str, str] = dict(self.aliases)
        for rel, path, token in zip(self.relpaths, self.paths, self.sealed_files):
            out[path.name] = out[rel] = out[str(path)] = token
        if self.kind == "dicom" and len(self.relpaths) > 1:
            folder = posixpath.dirname(self.relpaths[0])
            out[folder + "/"] = out[folder] = out[str(self.paths[0].parent)] = self.sealed
        return out


@dataclass(repr=False)
class SessionPlan:
    """Everything needed to convert one subject session; pseudonymised identifiers, and the plain
    paths in memory only (``root_relpath``, the items' ``relpaths``/``paths``)."""

    subject: str
    session: str
    root_relpath: str
    items: list[SourceItem] = field(default_factory=list)
    root_sealed: str = ""  # the session folder, sealed
    source_root: str | None = None  # the ingest folder, sealed (a "root:" token)
    visit_label: str | None = None  # BIDS ses- label or file-name prefix (plain, memory only): orders visits
    visit_date: Any = None  # datetime.date of the visit (StudyDate, scans.tsv): memory only, never stored
    visit_date_source: str | None = None  # "study_date" | "scans_tsv"
    common_transform: Path | None = None  # ITK transform: subject's common space → this session's reference image
    sealed_common_transform: str | None = None

    def __repr__(self) -> str:
        return f"SessionPlan({self.case_id}, {len(self.items)} items)"

    def ingest_folder(self) -> str | None:
        """The absolute ingest folder (plain, memory only): what :func:`scrub` withholds paths under."""
        for item in self.items:
            for rel, path in zip(item.relpaths, item.paths):
                p = str(path)
                if p.endswith("/" + rel):
                    return p[: -len(rel) - 1] or "/"
        return None

    def scrub(self, text: str, any_path: bool = False) -> str:
        """``text`` with the session's paths and file names sealed, other paths under the ingest folder
        withheld, and with ``any_path`` (what is stored: reasons) every other path too."""
        folder = self.ingest_folder()
        return scrub(text, self.replacements(), withhold=(folder,) if folder else (), any_path=any_path)

    def replacements(self) -> dict[str, str]:
        """Every plain path of the session → its sealed path (for :func:`~pipeline.core.lineage.scrub`)."""
        out: dict[str, str] = {}
        if self.root_relpath not in ("", "."):
            out[self.root_relpath] = out[self.root_relpath + "/"] = self.root_sealed
        for item in self.items:
            out.update(item.replacements())
        return out

    @property
    def case_id(self) -> str:
        return f"{self.subject}_{self.session}"

    def work_estimate(self) -> int:
        """Rough size of the conversion work: bytes of the used inputs, gzip files counted 3x
        (their typical compression ratio). Used to start the largest sessions first."""
        total = 0
        for item in self.items:
            if item.unused_reason:
                continue
            for path in item.paths:
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                total += 3 * size if path.name.lower().endswith(".gz") else size
        return total

    def fingerprint(self, digests: dict[str, str]) -> str:
        """sha256 over (sealed path, digest) of every used input, sorted (``digests`` by plain
        relpath). Over the sealed paths, not the plain ones: a key-less reader cannot confirm a
        guessed path (a patient's folder name) against the stored fingerprint and digests."""
        h = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: i.sealed_files[0]):
            if item.unused_reason:
                continue
            for token, rel in sorted(zip(item.sealed_files, item.relpaths)):
                h.update(f"{token}\0{digests.get(rel, '')}\n".encode())
            if item.transform is not None:
                h.update(f"T{item.sealed_transform}\0{file_sha256(item.transform)}\n".encode())
        return h.hexdigest()


@dataclass
class Rejected:
    """An input discovery rejects: its path (plain, memory only, and sealed), why in words (naming
    files by their sealed path) and as a code, and its format when known."""

    relpath: str
    reason: str
    code: ReasonCode
    kind: str | None = None
    sealed: str = ""


@dataclass
class Discovery:
    root: Path
    sessions: list[SessionPlan]
    rejected: list[Rejected]
    unchanged: list[str] = field(default_factory=list)  # committed DICOM cases whose files are all unchanged
    source_root: str | None = None  # ``root``, sealed (a "root:" token)
    pair_labels: list[PairLabel] = field(default_factory=list)  # change masks of a visit pair (longitudinal folders)


@dataclass(repr=False)
class PairLabel:
    """A lesion-change mask that belongs to two sessions of one subject, not to one session (e.g.
    ``gt.nii.gz`` beside ``study1_*`` and ``study2_*``): it becomes the pair's expert mask."""

    subject: str
    sessions: tuple[tuple[str, str], ...]  # (subject, session) keys of the folder's sessions
    relpath: str  # plain, memory only
    path: Path
    sealed: str = ""

    def __repr__(self) -> str:
        return f"PairLabel({self.subject}, {self.sealed})"


@dataclass
class KnownCase:
    """A committed case as discovery needs it, to skip re-reading headers of unchanged studies.

    Attributes:
        case_id: the case.
        root: folder (relative to the ingest root) holding all its DICOM files.
        sources: relpath → (size in bytes, keyed (size, mtime) tag, :func:`~pipeline.core.lineage.stat_tag`)
            of every file it was converted from.
        accounted: relpaths (files) or folder prefixes (ending in "/") of its unused/rejected inputs.
    """

    case_id: str
    root: str
    sources: dict[str, tuple[int, int]]
    accounted: tuple[str, ...] = ()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as the source tree names it (lexically: a symlink keeps
    its own name in the tree). Paths come from walking ``root``, so they lie under it.
    String operations: this runs for every file of every rerun."""
    p, r = str(path), str(root)
    if p == r:
        return "."
    if p.startswith(r.rstrip(os.sep) + os.sep):
        return p[len(r.rstrip(os.sep)) + 1 :].replace(os.sep, "/")
    return p


def _rejected(lin: Lineage, root: Path, path: Path, reason: str, code: ReasonCode, kind: str | None = None) -> Rejected:
    """A :class:`Rejected` input, with its sealed path and its reason naming files by their sealed path."""
    rel = _rel(path, root)
    token = lin.seal(rel)
    return Rejected(rel, scrub(reason, {str(path): token, rel: token, path.name: token}, withhold=(str(root),), any_path=True), code, kind, token)


def _seal_item(item: SourceItem, lin: Lineage, root: Path) -> SourceItem:
    """``item`` with its sealed paths set (the series' folder for a multi-file DICOM series)."""
    item.sealed_files = [lin.seal(r) for r in item.relpaths]
    if item.kind == "dicom" and len(item.relpaths) > 1:
        item.sealed = lin.seal(posixpath.dirname(item.relpaths[0]) + "/")
    else:
        item.sealed = item.sealed_files[0]
    if item.transform is not None:
        item.sealed_transform = lin.seal(_rel(item.transform, root))
    return item


def _volume_kind(path: Path) -> str:
    name = path.name.lower()
    return "nifti" if name.endswith((".nii", ".nii.gz")) else "metaimage"


_REGISTRATION_SUFFIX = re.compile(r"(reg_?to_?[a-z0-9]+|_to_[a-z0-9]+|space-[a-z0-9]+)", re.IGNORECASE)


def _modality_of_file(path: Path, cfg: PipelineConfig) -> str | None:
    name = _REGISTRATION_SUFFIX.sub("", path.name)
    return modality_of_filename(name, cfg.modality_rules)


def _prefix_before_modality(path: Path) -> str:
    """``study1_FLAIR.nii.gz`` → ``study1``; used to split a folder holding several sessions."""
    stem = strip_extension(path.name)
    m = re.search(r"(^|[_\-])(flair|t1|t2|pd|mask|lesion|gt|seg|label|gold)", stem, re.IGNORECASE)
    return stem[: m.start()].strip("_-") if m else stem


def _find_transform(image: Path, reference_modality: str) -> Path | None:
    stem = strip_extension(image.name)
    for cand in sorted(image.parent.glob(f"{stem}_*")):
        if cand.suffix.lower() in (".txt", ".tfm") and re.search(rf"to_?{reference_modality}", cand.name, re.IGNORECASE):
            return cand
    return None


def _find_common_transform(image: Path) -> Path | None:
    """``<image stem>_*to_common*.txt|.tfm`` beside a reference image: the subject's common space
    (e.g. ``study1_FLAIR_to_common_space.txt`` of the longitudinal MS database)."""
    stem = strip_extension(image.name)
    for cand in sorted(image.parent.glob(f"{stem}_*")):
        if cand.suffix.lower() in (".txt", ".tfm") and re.search(r"to_?common", cand.name, re.IGNORECASE):
            return cand
    return None


def _scans_tsv_date(paths: list[Path], root: Path) -> Any:
    """The earliest ``acq_time`` date of ``paths`` in a BIDS ``*_scans.tsv`` of one of their
    folders up to ``root`` (None when there is none)."""
    import csv
    import datetime as dt

    wanted = {p.resolve() for p in paths}
    folder = paths[0].parent
    dates = []
    while True:
        for tsv in sorted(folder.glob("*_scans.tsv")):
            try:
                with open(tsv, newline="") as fh:
                    for row in csv.DictReader(fh, delimiter="\t"):
                        name, when = row.get("filename"), (row.get("acq_time") or "").strip()
                        if name and when and (folder / name).resolve() in wanted:
                            try:
                                dates.append(dt.date.fromisoformat(when[:10]))
                            except ValueError:
                                continue
            except OSError:
                continue
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(dates) if dates else None


def _dicom_date(text: str) -> Any:
    import datetime as dt

    try:
        return dt.datetime.strptime(text.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _unmapped(modality: str | None, config: PipelineConfig, no_rule: str) -> Unusable | None:
    """Why an input whose modality is ``modality`` is not used (``no_rule``: the words when no rule matched)."""
    if modality is None:
        return Unusable(ReasonCode.NO_MODALITY_RULE, no_rule)
    if modality not in (*config.channels, "MASK"):
        return Unusable(ReasonCode.MODALITY_NOT_CONFIGURED, f"modality {modality} is not among the configured channels {list(config.channels)}")
    return None


def _plan_dicom(root: Path, files: list[Path], config: PipelineConfig, key: bytes, client: Any) -> tuple[dict[tuple[str, str], SessionPlan], dict[Path, tuple[str, str]], list[Rejected]]:
    """Sessions (one per study) of the DICOM ``files``, their study folders, and unreadable files."""
    sessions: dict[tuple[str, str], SessionPlan] = {}
    study_roots: dict[Path, tuple[str, str]] = {}
    rejected: list[Rejected] = []
    if not files:
        return sessions, study_roots, rejected
    lin = lineage(key)
    source_root = lin.seal_root(str(root))
    series_list, errors = scan_series_parallel(files, client)
    for err in errors:
        rejected.append(_rejected(lin, root, Path(err.path), err.reason, err.code, "dicom"))
    by_study: dict[str, list[Any]] = defaultdict(list)
    for s in series_list:
        by_study[s.study_uid].append(s)
    for study_uid, series_of_study in by_study.items():
        patient = series_of_study[0].patient_id or "unknown-patient"
        subject = pseudonymise(patient, key, "sub-")
        session = pseudonymise(f"{patient}/{study_uid}", key, "ses-", 8)
        files = [f for s in series_of_study for f in s.files]
        study_root = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
        study_rel = _rel(study_root, root)
        plan = sessions.setdefault((subject, session),
                                   SessionPlan(subject, session, study_rel, root_sealed=lin.seal(study_rel + "/"), source_root=source_root))
        study_roots[study_root] = (subject, session)
        dates = sorted(d for d in (_dicom_date(s.study_date) for s in series_of_study) if d is not None)
        if dates:
            plan.visit_date, plan.visit_date_source = dates[0], "study_date"
        for s in sorted(series_of_study, key=lambda s: (s.series_number or 0, s.key)):
            fields_text = {tuple(r.fields): s.header_text(r.fields) for r in config.modality_rules}  # raw text, in memory
            modality = modality_of_series(fields_text, config.modality_rules)
            unused = unusable_series(tuple(s.image_type), s.n_volumes, s.series_description, s.is_mosaic) or _unmapped(
                modality, config, "no modality rule matched (SeriesDescription/ProtocolName/SequenceName); add a rule to the configuration")
            desc = clean_descriptor(s.series_description or s.protocol_name or "", [patient])
            item = SourceItem(
                kind="dicom",
                name=f"series {s.series_number} {desc}".strip(),
                relpaths=[_rel(Path(f), root) for f in s.files],
                paths=[Path(f) for f in s.files],
                modality=modality,
                unused_reason=unused.reason if unused else None,
                unused_code=unused.code if unused else None,
                series=s,
                series_description=desc,
            )
            plan.items.append(_seal_item(item, lin, root))
    return sessions, study_roots, rejected


def _unchanged_cases(root: Path, known: Sequence[KnownCase], dicom_files: list[Path], volume_files: list[Path],
                     stats: dict[Path, os.stat_result], stat_key: bytes) -> dict[str, KnownCase]:
    """Known DICOM cases whose every source file is present with the size and mtime it was hashed at
    (compared by keyed tag), and whose folder holds no file the case does not account for.
    ``stats``: files already stat'ed."""
    if not known:
        return {}
    present = {_rel(p, root): p for p in (*dicom_files, *volume_files)}
    fresh: dict[str, KnownCase] = {}
    for kc in known:
        for rel, (size, tag) in kc.sources.items():
            p = present.get(rel)
            if p is None:
                break
            st = stats.get(p) or p.stat()
            if st.st_size != size or stat_tag(stat_key, st.st_size, st.st_mtime_ns) != tag:
                break
        else:
            fresh[kc.case_id] = kc
    by_root = {kc.root: kc for kc in fresh.values()}
    for rel in present:
        kc = _owner(rel, by_root)
        if kc is not None and kc.case_id in fresh and not _accounts_for(kc, rel):
            del fresh[kc.case_id]  # a new file in the study: plan it again
    return fresh


def _owner(rel: str, by_root: dict[str, KnownCase]) -> KnownCase | None:
    parts = rel.split("/")
    for i in range(len(parts) - 1, -1, -1):
        kc = by_root.get("/".join(parts[:i]))
        if kc is not None:
            return kc
    return None


def _accounts_for(kc: KnownCase, rel: str) -> bool:
    return rel in kc.sources or any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in kc.accounted)


def _claimed_files(root: Path, fresh: dict[str, KnownCase], files: list[Path]) -> set[Path]:
    """The files that belong to unchanged cases (their headers need not be read again)."""
    if not fresh:
        return set()
    by_root = {kc.root: kc for kc in fresh.values()}
    out = set()
    for p in files:
        rel = _rel(p, root)
        kc = _owner(rel, by_root)
        if kc is not None and _accounts_for(kc, rel):
            out.add(p)
    return out


def discover(
    source: str | Path,
    config: PipelineConfig,
    key: bytes,
    progress: Callable[[str, int, int], None] | None = None,
    client: Any = None,
    known: Sequence[KnownCase] = (),
) -> Discovery:
    """Walk ``source`` and plan every session found in it (see module docstring).

    Args:
        source: folder to scan (recursively; hidden entries skipped).
        config: modality rules and reference modality.
        key: HMAC key for pseudonyms (:func:`pipeline.core.config.pseudonym_key`).
        progress: optional ``callback(stage, done, total)``.
        client: optional Dask client; large DICOM header scans then run on its workers
            (:func:`pipeline.io.readers.dicom.scan_series_parallel`).
        known: committed cases (:func:`pipeline.ingest.incremental.known_cases`); a DICOM case whose files are
            all unchanged is listed in ``Discovery.unchanged`` without re-reading its headers.
    """
    from pipeline.io.readers import is_dicom_file, is_volume_file, walk_files

    root = Path(source).resolve()
    lin = lineage(key)
    source_root = lin.seal_root(str(root))
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {source_root} does not exist or is not a folder (`lesionflow lineage {source_root}` shows it)")
    rejected: list[Rejected] = []
    volume_files: list[Path] = []
    dicom_files: list[Path] = []
    slice_files: list[Path] = []
    all_files = walk_files(root)
    # files a committed case was converted from, with their size and mtime then: when unchanged,
    # they are DICOM without opening them again
    known_files = {rel: st for kc in known for rel, st in kc.sources.items()}
    stats: dict[Path, os.stat_result] = {}
    for i, path in enumerate(all_files):
        if progress and i % 500 == 0:
            progress("scan", i, len(all_files))
        name, suffix = path.name, path.suffix.lower()
        if name in IGNORED_NAMES or name.upper().startswith(("README", "LICENSE")):
            continue
        special = _not_regular(path)  # a FIFO would block the digest's open() for ever, /dev/zero never end it
        if special is not None:
            rejected.append(_rejected(lin, root, path, special, ReasonCode.NOT_REGULAR_FILE,
                                      _volume_kind(path) if is_volume_file(path) else None))
            continue
        if is_volume_file(path):
            volume_files.append(path)
            continue
        if is_slice_file(path):
            slice_files.append(path)
            continue
        if suffix in IGNORED_SUFFIXES:
            continue
        try:
            st = stats[path] = path.stat()
        except OSError as exc:
            rejected.append(_rejected(lin, root, path, f"cannot read: {exc.strerror}", ReasonCode.UNREADABLE))
            continue
        size = st.st_size
        if size == 0:
            rejected.append(_rejected(lin, root, path, "zero-byte file", ReasonCode.EMPTY_FILE))
            continue
        if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            rejected.append(_rejected(lin, root, path, f"unsupported image format '{suffix}' (supported: DICOM, .nii, .nii.gz, .mhd/.raw, .mha)",
                                     ReasonCode.UNSUPPORTED_FORMAT))
            continue
        was = known_files.get(_rel(path, root))
        if (was is not None and was == (size, stat_tag(lin.stat_key, size, st.st_mtime_ns))) or is_dicom_file(path):
            dicom_files.append(path)
        elif suffix in (".dcm", ".ima", ""):
            rejected.append(_rejected(lin, root, path, "not a readable DICOM file (no DICM preamble and not parseable)",
                                      ReasonCode.NOT_DICOM, "dicom"))
    if progress:
        progress("scan", len(all_files), len(all_files))

    sessions: dict[tuple[str, str], SessionPlan] = {}
    study_roots: dict[Path, tuple[str, str]] = {}

    # ---------------------------------------------------------------- DICOM
    fresh = _unchanged_cases(root, known, dicom_files, volume_files, stats, lin.stat_key)
    claimed = _claimed_files(root, fresh, dicom_files + volume_files)
    dicom_errors: list[Rejected] = []
    if dicom_files:
        todo = [f for f in dicom_files if f not in claimed]
        sessions, study_roots, dicom_errors = _plan_dicom(root, todo, config, key, client)
        collided = {c for c in (p.case_id for p in sessions.values()) if c in fresh}
        if collided:  # a new series of a study taken for unchanged: plan those studies in full
            for c in collided:
                del fresh[c]
            claimed = _claimed_files(root, fresh, dicom_files + volume_files)
            todo = [f for f in dicom_files if f not in claimed]
            sessions, study_roots, dicom_errors = _plan_dicom(root, todo, config, key, client)
    rejected.extend(dicom_errors)
    volume_files = [f for f in volume_files if f not in claimed]

    # ---------------------------------------------------------------- NIfTI / MetaImage
    discovery_pairs: list[PairLabel] = []
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for path in volume_files:
        by_dir[path.parent].append(path)
    for folder, paths in sorted(by_dir.items()):
        mods = {p: _modality_of_file(p, config) for p in paths}
        split = any(n > 1 for m, n in Counter(mods.values()).items() if m is not None)  # e.g. study1_FLAIR + study2_FLAIR
        groups: dict[str, list[Path]] = defaultdict(list)
        for p in paths:
            groups[_prefix_before_modality(p) if split else ""].append(p)
        rel_parts = folder.relative_to(root).parts if folder.is_relative_to(root) else folder.parts
        bids_sub = next((p for p in rel_parts if p.startswith("sub-")), None)
        bids_ses = next((p for p in rel_parts if p.startswith("ses-")), None)
        subject_raw = bids_sub or (rel_parts[-1] if rel_parts else root.name)
        for prefix, group in sorted(groups.items()):
            if folder in study_roots and not split:
                plan = sessions[study_roots[folder]]
            elif split and prefix == "":
                n_sessions = sum(1 for k in groups if k)
                masks = [p for p in group if mods[p] == "MASK"]
                if n_sessions == 2 and masks:  # a change mask of the folder's two visits
                    subject = pseudonymise(subject_raw, key, "sub-")
                    folder_rel = _rel(folder, root)
                    keys = tuple((subject, pseudonymise(f"{subject_raw}/{folder_rel}/{bids_ses or k}", key, "ses-", 8)) for k in sorted(groups) if k)
                    for p in masks:
                        discovery_pairs.append(PairLabel(subject, keys, _rel(p, root), p, sealed=lin.seal(_rel(p, root))))
                    group = [p for p in group if p not in masks]
                reason = ("cannot be assigned to one session: its folder holds several sessions and the file name has no session prefix"
                          + (" (a lesion-change mask is taken for the pair only when the folder holds exactly two sessions)"
                             if any(mods[p] == "MASK" for p in group) else ""))
                rejected.extend(_rejected(lin, root, p, reason, ReasonCode.UNASSIGNABLE, _volume_kind(p)) for p in group)
                continue
            else:
                session_raw = bids_ses or prefix or "ses-01"
                subject = pseudonymise(subject_raw, key, "sub-")
                folder_rel = _rel(folder, root)
                session = pseudonymise(f"{subject_raw}/{folder_rel}/{session_raw}", key, "ses-", 8)
                plan = sessions.setdefault((subject, session), SessionPlan(subject, session, folder_rel, root_sealed=lin.seal(folder_rel + "/"),
                                                                           source_root=source_root))
                plan.visit_label = session_raw if (bids_ses or prefix) else None
            for p in sorted(group):
                modality = mods[p]
                unused = _unmapped(modality, config, "no modality rule matched the file name; rename it (e.g. *_FLAIR.nii.gz) or add a rule")
                rels = [_rel(p, root)]
                ps = [p]
                aliases: dict[str, str] = {}
                if p.name.lower().endswith(".mhd"):
                    raw = _mhd_data_file(p)
                    if raw is not None and raw.exists() and not _data_file_refused(p, raw):
                        rels.append(_rel(raw, root))
                        ps.append(raw)
                    elif raw is not None:  # missing: the reader's reason names it
                        token = lin.seal(_rel(raw, root))
                        aliases = {str(raw): token, _rel(raw, root): token, raw.name: token}
                item = SourceItem(
                    kind=_volume_kind(p),
                    name="",
                    relpaths=rels,
                    paths=ps,
                    modality=modality,
                    unused_reason=unused.reason if unused else None,
                    unused_code=unused.code if unused else None,
                    transform=_find_transform(p, config.reference_modality) if modality not in (None, config.reference_modality, "MASK") else None,
                    aliases=aliases,
                )
                _seal_item(item, lin, root)
                item.name = item.sealed
                plan.items.append(item)
                if modality == config.reference_modality and plan.common_transform is None:
                    common = _find_common_transform(p)
                    if common is not None:
                        plan.common_transform, plan.sealed_common_transform = common, lin.seal(_rel(common, root))
            if bids_ses and plan.visit_date is None:
                when = _scans_tsv_date(sorted(group), root)
                if when is not None:
                    plan.visit_date, plan.visit_date_source = when, "scans_tsv"

    _plan_slice_stacks(root, slice_files, config, key, sessions, rejected, source_root)

    ordered = sorted(sessions.values(), key=lambda s: (s.root_relpath, s.case_id))
    log.info("discovered %d sessions (%d unchanged) and %d rejected inputs in %s", len(ordered), len(fresh), len(rejected), source_root)
    for plan in ordered:
        for item in plan.items:
            log.debug("%s: %s %s → %s%s", plan.case_id, item.kind, item.name, item.modality or "no modality",
                      f" (unused: {item.unused_reason})" if item.unused_reason else "")
    for r in rejected:
        log.debug("rejected %s [%s]: %s", r.sealed, r.code.value, r.reason)
    return Discovery(root=root, sessions=ordered, rejected=rejected, unchanged=sorted(fresh), source_root=source_root,
                     pair_labels=discovery_pairs)


def _not_regular(path: Path) -> str | None:
    """Why ``path`` (symlinks followed) is not a regular file (a device, FIFO, socket), None when it
    is one or cannot be stat'ed (the reader then says why)."""
    import stat as stat_mod

    from pipeline.io.readers.errors import ReaderError
    from pipeline.io.readers.limits import regular_file

    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat_mod.S_ISREG(mode):
        return None
    try:
        regular_file(path)
    except ReaderError as err:
        return err.reason
    return None


def _data_file_refused(header: Path, data: Path) -> bool:
    """True when a MetaImage header's data file may not be read (a device or FIFO, or a file
    outside the header's folder): it is then neither hashed nor listed among the session's
    files, and the reader rejects the header with the reason."""
    from pipeline.io.readers.errors import ReaderError
    from pipeline.io.readers.limits import inside_folder, regular_file

    try:
        regular_file(data)
        inside_folder(header, data, "data file")
    except ReaderError:
        return True
    return False


def _mhd_data_file(mhd: Path) -> Path | None:
    """The ``ElementDataFile`` named in a MetaImage header (None for LOCAL / LIST)."""
    try:
        with open(mhd, errors="replace") as fh:
            for line in fh:
                if line.strip().lower().startswith("elementdatafile"):
                    value = line.split("=", 1)[1].strip()
                    if value.upper() in ("LOCAL", "LIST") or "%" in value:
                        return None
                    return mhd.parent / value
    except OSError:
        return None
    return None


def _plan_slice_stacks(root: Path, files: list[Path], config: PipelineConfig, key: bytes, sessions: dict[tuple[str, str], SessionPlan],
                       rejected: list[Rejected], source_root: str | None) -> None:
    """Sessions of the numbered TIFF slice stacks among ``files`` (added to ``sessions``); the rest rejected."""
    if not files:
        return
    lin = lineage(key)
    ss = config.slice_stack
    stacks: dict[tuple[Path, str], dict[str, list[Path]]] = defaultdict(lambda: {"images": [], "masks": []})
    for p in files:
        parsed = parse_slice_name(p.name, ss.mask_suffix)
        if parsed is None:
            rejected.append(_rejected(lin, root, p, "a TIFF file that is not a numbered slice (<stem>_<n>.tif or <stem>_<n>"
                                      f"{ss.mask_suffix}.tif)", ReasonCode.UNSUPPORTED_FORMAT, "slicestack"))
            continue
        stacks[(p.parent, parsed[0])]["masks" if parsed[2] else "images"].append(p)
    for (folder, stem), group in sorted(stacks.items()):
        folder_rel = _rel(folder, root)
        prefix = "" if folder_rel == "." else folder_rel + "/"
        images, masks = sort_slices(group["images"], ss.mask_suffix), sort_slices(group["masks"], ss.mask_suffix)
        if not images:
            pattern = f"{prefix}{stem}_*{ss.mask_suffix}.tif"
            token = lin.seal(pattern)
            rejected.append(Rejected(pattern, f"{len(masks)} mask slice(s) {token} without image slices", ReasonCode.LABEL_ONLY, "slicestack", token))
            continue
        subject_raw = folder.name if folder != root else stem
        subject = pseudonymise(subject_raw, key, "sub-")
        session = pseudonymise(f"{subject_raw}/{folder_rel}/{stem}", key, "ses-", 8)
        plan = sessions.setdefault((subject, session), SessionPlan(subject, session, folder_rel, root_sealed=lin.seal(prefix or "./"),
                                                                   source_root=source_root))
        kinds = [(i, m, images) for i, m in enumerate(ss.planes)] + ([(None, "MASK", masks)] if masks else [])
        for plane, modality, paths in kinds:
            unused = _unmapped(modality, config, "")
            item = SourceItem(kind="slicestack", name="", relpaths=[_rel(p, root) for p in paths], paths=list(paths), modality=modality,
                              unused_reason=unused.reason if unused else None, unused_code=unused.code if unused else None,
                              plane=plane, slice_stack=ss)
            _seal_item(item, lin, root)
            item.sealed = lin.seal(f"{prefix}{stem}_*{ss.mask_suffix if modality == 'MASK' else ''}.tif")
            item.name = item.sealed if plane is None else f"{item.sealed} plane {plane}"
            plan.items.append(item)
