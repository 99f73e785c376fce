"""Deaths from the hospital's FHIR R4 server (``[fhir]``) and from exported FHIR Bundles.

* :mod:`connector.fhir.client`: HTTP (httpx) with bearer-token-file or SMART backend-services auth,
  Retry-After on 429/503, paging that never leaves the configured server.
* :mod:`connector.fhir.deaths`: Patients (parsed with ``fhir.resources``, R4B models) to
  :class:`~connector.followup.feeds.FeedDeath`, the batched poll for linked patients, Bundle import.
"""
