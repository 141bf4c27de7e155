"""Versioned schemas of everything lesionflow stores (see LAYOUT.md)."""

from storage_schemas.models import (  # noqa: F401
    SCHEMA_VERSION,
    CaseMeta,
    CaseVolumeRow,
    CatalogRow,
    ChannelInfo,
    Geometry,
    LesionRow,
    ReasonCode,
    SourceFile,
    StoreManifest,
)
