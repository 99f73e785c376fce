"""Deaths from the hospital's HL7 v2 ADT feed, over MLLP, into follow-up under the pseudonym.

* :mod:`connector.hl7.mllp`: MLLP framing and ACK messages (AA/AE/AR).
* :mod:`connector.hl7.adt`: what an ADT message says about a death (parsed with python-hl7).
* :mod:`connector.hl7.listener`: the listener (the daemon's ``hl7`` role): durable spool, then
  processing from disk into :mod:`connector.followup.feeds`.

See ``docs/followup.md`` (interface engine set-up).
"""
