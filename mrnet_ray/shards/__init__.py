"""Prepared data: log-mel segments in Parquet shards, with their manifest.

The prepare job (:func:`mrnet_ray.shards.job.prepare`) lists a dataset, decodes and segments
its tracks in Ray Data tasks (:mod:`~mrnet_ray.shards.segment`, outcomes collected by the
:mod:`~mrnet_ray.shards.ledger` actor) and writes ``DIR/<split>/*.parquet`` and
``manifest.json`` (:mod:`~mrnet_ray.shards.manifest`) to a :mod:`~mrnet_ray.shards.target`;
:func:`open_prepared` (:mod:`~mrnet_ray.shards.reader`) opens the result for training,
search and export, without Ray.
"""

from mrnet_ray.shards.reader import Prepared, SplitArrays, open_prepared

__all__ = ["Prepared", "SplitArrays", "open_prepared"]
