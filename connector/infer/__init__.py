"""Coronary artery calcium (CAC) stage: series selection, volume loading, ONNX model, exact Agatston.

Kept import-light on purpose (``connector.config`` imports :mod:`connector.infer.settings`), so
onnxruntime and scipy load only when a runner is built. Entry points:

- :func:`connector.infer.study.score_study` (daemon worker, per stable study)
- :class:`connector.infer.runner.CacRunner` (``CacRunner.from_config(config)``, one per process)
- :func:`connector.infer.agatston.agatston` (exact scoring, model-independent)
"""
