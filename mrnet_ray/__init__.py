"""mrnet_ray: train MRNet music classifiers and search their architecture on Ray clusters.

The package follows the data flow, one package per stage under one module per command:
``features`` (audio -> log-mel) -> ``datasets`` (adapters) -> ``shards`` (Ray Data -> Parquet,
``prepare``) -> ``nn`` (the model family) -> ``training`` (the epoch loop, Ray Train; ``train``)
-> ``search`` (Ray Tune + Optuna; ``tune``), recorded in MLflow by ``tracking`` -> ``export``
(the winner as a bundle; ``best``) -> ``inference`` (``predict``). ``config`` holds the frozen
settings of every stage, ``ranking`` the one order of trials, ``storage`` the atomic writes.
"""

__version__ = "0.1.0"
