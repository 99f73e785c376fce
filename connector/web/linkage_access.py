"""The linkage table as one dashboard request may use it: every audit entry names who and from where.

Why a wrapper: the linkage audit log (:mod:`connector.linkage.audit`) records each lookup of
identifiers, but the provider the daemon opened knows only that it is the daemon, so an entry
written for a dashboard action said ``"role": "daemon"`` and nothing about the person. Pages hand
this wrapper (not the provider) to the search and the follow-up import; it adds the signed-in
user's name and the source address (the client's, as the trusted proxy reported it) to every
entry, and offers nothing else of the provider, so a lookup cannot reach the table unaudited
through it.
"""

from __future__ import annotations

from typing import Any

from flask import g, request


class AuditedLinkage:
    """The provider's lookups, each audit entry written with ``user`` and ``source`` added."""

    def __init__(self, provider: Any, user: str, source: str) -> None:
        self._provider = provider
        self.user = user
        self.source = source

    def audit(self, action: str, **details: str | int | bool | None) -> int:
        return int(self._provider.audit(action, user=self.user, source=self.source, **details))

    def lookup_patient(self, patient_id: str, issuer: str = "", *, audit: bool = True) -> Any:
        found = self._provider.lookup_patient(patient_id, issuer, audit=False)
        if audit:
            self.audit("lookup.patient_id", found=found is not None, pseudonym=found.pseudonym if found else None)
        return found

    def lookup_accession(self, accession: str, *, audit: bool = True) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = self._provider.lookup_accession(accession, audit=False)
        if audit:
            self.audit("lookup.accession", found=len(found))
        return found

    def identifiers_of(self, pseudonym: str, **details: str | int | bool | None) -> Any:
        """The identifiers behind a pseudonym, audited (``web.show_identifiers``) before reading."""
        self.audit("web.show_identifiers", pseudonym=pseudonym, **details)
        return self._provider.store.find_by_pseudonym(pseudonym)

    def study_uids_of(self, pseudonym: str) -> list[str]:
        """De-identified study UIDs (no identifier read: not audited, like the provider's)."""
        return list(self._provider.study_uids_of(pseudonym))

    def name_tokens(self, pseudonym: str) -> frozenset[str]:
        """For the follow-up text cleaner to refuse the patient's own words (a machine check, nothing
        shown: not audited, like the provider's)."""
        return frozenset(self._provider.name_tokens(pseudonym))

    def uid_secret(self) -> bytes:
        """For the follow-up import's keyed event ids (reads no identifier)."""
        return bytes(self._provider.uid_secret())


def source_address() -> str:
    """The client's address for logs and audit entries (the proxy's report when it is trusted)."""
    return request.remote_addr or "unknown"


def for_request(provider: Any) -> AuditedLinkage:
    """``provider`` for the signed-in user of this request."""
    return AuditedLinkage(provider, str(g.get("user") or "?"), source_address())
