"""Training one model: the epoch loop and evaluation, and Ray Train around them.

:mod:`~mrnet_ray.training.loop` (optimizer, schedule, one epoch, evaluation) with
:mod:`~mrnet_ray.training.augment` and the mergeable :mod:`~mrnet_ray.training.metrics` runs
without Ray; :mod:`~mrnet_ray.training.checkpoint` saves and loads its state;
:mod:`~mrnet_ray.training.raytrain` adapts it to Ray Train V2 workers, and
:mod:`~mrnet_ray.training.run` is one run as ``python -m mrnet_ray.train`` asks for it.
"""
