"""Retrospective backfill: query the hospital PACS (C-FIND), keep a worklist in the state DB and
retrieve the matching studies (C-MOVE or C-GET) into the same durable ingest path as C-STORE."""
