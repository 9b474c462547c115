"""mrnet_ray: train MRNet music classifiers and search their architecture on Ray clusters.

The package follows the data flow: ``features`` (audio -> log-mel) -> ``datasets`` (adapters)
-> ``prepare`` (Ray Data -> Parquet shards) -> ``data`` -> ``model`` -> ``train`` (Ray Train)
-> ``tune`` (Ray Tune + Optuna, MLflow via ``tracking``) -> ``best`` (export) -> ``predict``.
"""

__version__ = "0.1.0"
