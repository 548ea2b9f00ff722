"""Statistics on relevance maps and on the brain-age gap (METHODS §10).

* Permutation inference (Winkler et al. 2014; FSL randomise): :func:`permutation_test` — batched
  Freedman–Lane GLM (:mod:`brainage.stats.glm`), sign flips, exchangeability blocks, exact TFCE
  (:mod:`brainage.stats.tfce`), FWE from the maximum statistic.
* Lesion analysis (paper 003): :func:`lesion_relevance_test`, :func:`write_lesion_table`.
"""

from brainage.stats.glm import BatchedGLM, Rearrangements, partition_design
from brainage.stats.lesions import SUMMARY_FIELDS, lesion_relevance_test, write_lesion_table
from brainage.stats.permutation import PermutationResult, permutation_test
from brainage.stats.tfce import tfce_volumes

__all__ = [
    "SUMMARY_FIELDS",
    "BatchedGLM",
    "PermutationResult",
    "Rearrangements",
    "lesion_relevance_test",
    "partition_design",
    "permutation_test",
    "tfce_volumes",
    "write_lesion_table",
]
