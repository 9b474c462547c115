"""The architecture search: a space file, Ray Tune trials drawn by Optuna, and what they found.

- the space: :mod:`~mrnet_ray.search.spaces` (names -> files), :mod:`~mrnet_ray.search.space`
  (:class:`SearchSpace`, Optuna's define-by-run function) over the file format
  (:mod:`~mrnet_ray.search.yaml_file`, :mod:`~mrnet_ray.search.structure`,
  :mod:`~mrnet_ray.search.specs`);
- the run: :mod:`~mrnet_ray.search.settings` and its record ``search.json``
  (:mod:`~mrnet_ray.search.record`, copied to the results root with the Optuna journal by
  :mod:`~mrnet_ray.search.journal`), one owner (:mod:`~mrnet_ray.search.lock`), the cluster
  (:mod:`~mrnet_ray.search.resources`), one trial (:mod:`~mrnet_ray.search.trial`), limits
  (:mod:`~mrnet_ray.search.limits`), warm start (:mod:`~mrnet_ray.search.warm`), the Tuner
  (:mod:`~mrnet_ray.search.tuner`), start to end (:mod:`~mrnet_ray.search.driver`,
  :mod:`~mrnet_ray.search.resume`, :mod:`~mrnet_ray.search.closing`);
- the outcome: :mod:`~mrnet_ray.search.outcomes` and :mod:`~mrnet_ray.search.report`;
- after it: confirmation of the top configurations (:mod:`~mrnet_ray.search.confirm`) and the
  final fit on train + valid (:mod:`~mrnet_ray.search.refit`), both planned trials
  (:mod:`~mrnet_ray.search.planned`).
"""
