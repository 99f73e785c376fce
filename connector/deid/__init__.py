"""De-identification: rule files (PS3.15 Basic Profile and options), the engine and the study step.

Entry points: :class:`connector.deid.engine.DeidEngine` (``from_config(config, provider)``) and
:func:`connector.deid.study.deidentify_study`. This package must stay importable without side
effects, because :mod:`connector.config` imports its settings section.
"""
