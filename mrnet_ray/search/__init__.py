"""The architecture search: a space file, Ray Tune trials drawn by Optuna, and what they found.

- the space: :mod:`~mrnet_ray.search.spaces` (names -> files), :mod:`~mrnet_ray.search.space`
  (:class:`SearchSpace`, Optuna's define-by-run function) over the file format
  (:mod:`~mrnet_ray.search.yaml_file`, :mod:`~mrnet_ray.search.structure`,
  :mod:`~mrnet_ray.search.specs`);
- the run: :mod:`~mrnet_ray.search.settings` and its record ``search.json``
  (:mod:`~mrnet_ray.search.record`), the cluster (:mod:`~mrnet_ray.search.resources`), one trial
  (:mod:`~mrnet_ray.search.trial`), the Tuner (:mod:`~mrnet_ray.search.tuner`), start to end
  (:mod:`~mrnet_ray.search.driver`);
- the outcome: :mod:`~mrnet_ray.search.outcomes` and :mod:`~mrnet_ray.search.report`.
"""
