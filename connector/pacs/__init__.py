"""Calling the hospital PACS as an SCU: association, TLS, our AE titles (:mod:`connector.pacs.scu`).

Backfill (C-FIND, C-MOVE, C-GET), ``echo --pacs`` and sending results back (C-STORE) all open
their associations here; the ``[pacs]`` section itself is :mod:`connector.settings.pacs`.
"""
