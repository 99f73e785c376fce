"""Coronary artery calcium (CAC) stage: series selection, volume loading, ONNX model, exact Agatston.

Kept import-light on purpose, so onnxruntime and scipy load only when a runner is built
(``[cac]`` itself is :mod:`connector.settings.cac`). Entry points:

- :func:`connector.infer.study.score_study` (daemon worker, per stable study)
- :class:`connector.infer.runner.CacRunner` (``CacRunner.from_config(config)``, one per process)
- :func:`connector.infer.agatston.agatston` (exact scoring, model-independent)
"""
