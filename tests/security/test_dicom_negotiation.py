"""Issue 24 row 10: negotiation accepts only what docs/dicom-conformance.md promises (Verification and
Storage), and refuses everything else per presentation context (result 3, abstract syntax not
supported) while the rest of the association goes on. Real receiver, real sockets on 127.0.0.1."""

from __future__ import annotations

import uuid
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from connector.config import ConfigError, load_config
from connector.ingest import pdu
from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.security.dicom_support import (
    CT,
    EXPLICIT_LE,
    IMPLICIT_LE,
    MWL_FIND,
    STUDY_ROOT_FIND,
    VERIFICATION,
    Receiver,
    accepted,
    associate,
    pdv,
    read_pdu,
    response_status,
    store_command,
)
from tests.support.dicomfiles import dataset_bytes, stored_by_sop

ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED = 0, 3
PRIVATE_STORAGE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage: private, not in the standard


def test_worklist_and_bogus_abstract_syntaxes_are_refused_per_context_and_storage_goes_on(tmp_path: Path) -> None:
    random_uid = f"2.25.{uuid.uuid4().int}"
    proposed = [(1, CT, [EXPLICIT_LE]), (3, MWL_FIND, [IMPLICIT_LE]), (5, "<script>alert(1)</script>", [IMPLICIT_LE]),
                (7, random_uid, [IMPLICIT_LE]), (9, STUDY_ROOT_FIND, [IMPLICIT_LE]), (11, VERIFICATION, [IMPLICIT_LE]),
                (13, PRIVATE_STORAGE, [IMPLICIT_LE])]
    f = write_series(ct_slices(SyntheticStudy(), 1, rows=32, cols=32), tmp_path / "in")[0]
    data = dataset_bytes(f)
    uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    with Receiver(tmp_path) as r:
        sock, ac = associate(r.port, proposed)
        with sock:
            results, _ = accepted(ac)
            assert results == {1: ACCEPTED, 3: ABSTRACT_SYNTAX_NOT_SUPPORTED, 5: ABSTRACT_SYNTAX_NOT_SUPPORTED,
                               7: ABSTRACT_SYNTAX_NOT_SUPPORTED, 9: ABSTRACT_SYNTAX_NOT_SUPPORTED, 11: ACCEPTED,
                               13: ABSTRACT_SYNTAX_NOT_SUPPORTED}
            # the association is up: a C-STORE on the storage context is answered and filed
            sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, pdv(1, 0x03, store_command(uid)) + pdv(1, 0x02, data)))
            pdu_type, body = read_pdu(sock)
            assert pdu_type == pdu.P_DATA_TF and response_status(body) == 0
            # a refused context carries nothing: a C-FIND on the worklist context ends the association
            sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, pdv(3, 0x03, store_command(uid, 2))))
            pdu_type, body = read_pdu(sock)
            assert pdu_type == pdu.A_ABORT and body[2] == pdu.SOURCE_SERVICE_PROVIDER
        assert list(stored_by_sop(r.layout.spool)) == [uid]


def test_a_configured_private_storage_class_is_accepted(tmp_path: Path) -> None:
    with Receiver(tmp_path, extra_storage_sop_classes=f'["{PRIVATE_STORAGE}"]') as r:
        sock, ac = associate(r.port, [(1, PRIVATE_STORAGE, [EXPLICIT_LE]), (3, "1.2.3.4", [EXPLICIT_LE])])
        sock.close()
        assert accepted(ac)[0] == {1: ACCEPTED, 3: ABSTRACT_SYNTAX_NOT_SUPPORTED}


def test_extra_storage_classes_must_be_uids() -> None:
    with pytest.raises(ConfigError, match="extra_storage_sop_classes: every entry must be a UID"):
        load_config(None, environ={"SITE_CONNECTOR__DICOM__EXTRA_STORAGE_SOP_CLASSES": '["<script>"]'})


def test_pynetdicom_sees_worklist_refused_and_its_c_find_is_not_sent(tmp_path: Path) -> None:
    """An independent implementation reads the same answer: MWL-FIND refused, storage accepted."""
    with Receiver(tmp_path) as r:
        ae = AE(ae_title="PYNETSCU")
        ae.add_requested_context(CT, [EXPLICIT_LE])
        ae.add_requested_context(MWL_FIND)
        assoc = ae.associate("127.0.0.1", r.port, ae_title="SITECONN")
        try:
            assert assoc.is_established
            assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [CT]
            assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [MWL_FIND]
            assert [cx.result for cx in assoc.rejected_contexts] == [ABSTRACT_SYNTAX_NOT_SUPPORTED]
            query = pydicom.Dataset()
            query.PatientName = "*"
            with pytest.raises(ValueError, match="No presentation context"):
                next(assoc.send_c_find(query, MWL_FIND))
        finally:
            assoc.release()
