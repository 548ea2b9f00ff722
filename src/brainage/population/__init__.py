"""Population relevance maps in template space: normalisation, averaging, top-fraction maps."""

from brainage.population.maps import (
    NORMALISATIONS,
    normalise_maps,
    population_map_path,
    population_mean_map,
    read_sidecar,
    top_fraction_map,
    top_fraction_mask,
    write_population_maps,
)

__all__ = [
    "NORMALISATIONS",
    "normalise_maps",
    "population_map_path",
    "population_mean_map",
    "read_sidecar",
    "top_fraction_map",
    "top_fraction_mask",
    "write_population_maps",
]
