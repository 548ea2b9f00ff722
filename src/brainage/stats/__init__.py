"""Statistics on relevance maps and on the brain-age gap (METHODS §10).

* Lesion analysis (paper 003): :func:`lesion_relevance_test`, :func:`write_lesion_table`.
"""

from brainage.stats.lesions import SUMMARY_FIELDS, lesion_relevance_test, write_lesion_table

__all__ = ["SUMMARY_FIELDS", "lesion_relevance_test", "write_lesion_table"]
