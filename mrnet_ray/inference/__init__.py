"""Putting an exported model to work: classify files (:mod:`~mrnet_ray.inference.predict`)."""
