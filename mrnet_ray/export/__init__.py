"""Taking a search's winner: rank its trials, export the best as a bundle, register it.

:mod:`~mrnet_ray.export.candidates` ranks the trials; :mod:`~mrnet_ray.export.winner` exports
one: its best checkpoint (:mod:`~mrnet_ray.export.checkpoints`), one test evaluation
(:mod:`~mrnet_ray.export.evaluate`), the bundle (:mod:`~mrnet_ray.export.bundle`) with its
model card and plots (:mod:`~mrnet_ray.export.card`, :mod:`~mrnet_ray.export.plots`), and the
registry with its champion rule (:mod:`~mrnet_ray.export.champion`).
"""
