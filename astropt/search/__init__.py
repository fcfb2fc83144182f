"""Similarity search, anomaly ranking and a galaxy viewer over an embedding export.

``astropt index`` (:mod:`astropt.search.index`), ``astropt search``
(:mod:`astropt.search.query`), ``astropt anomalies``
(:mod:`astropt.search.anomalies`) and ``astropt view``
(:mod:`astropt.search.view`). From Python::

    from astropt.search import build_index, search, anomaly_scores
    build_index("emb.parquet")                       # emb.index/ beside it
    search("emb.parquet", id=123456, k=16)           # DataFrame: query, rank, id, distance
    search("emb.parquet", image="galaxy.jpg", k=16)  # embedded with the export's model
"""

from astropt.search.anomalies import anomaly_scores, precision_at
from astropt.search.index import (
    Neighbours,
    SearchError,
    SearchIndex,
    build_index,
    index_path,
    open_index,
)
from astropt.search.query import embed_images, search

__all__ = [
    "Neighbours",
    "SearchError",
    "SearchIndex",
    "anomaly_scores",
    "build_index",
    "embed_images",
    "index_path",
    "open_index",
    "precision_at",
    "search",
]
