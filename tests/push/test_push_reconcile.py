"""Reconciliation's comparison (unit) and its outcomes against a live dev registry (in process)."""

from __future__ import annotations

import time

import pytest

from connector.deid.engine import DeidEngine
from connector.push.reconcile import Reconciler, Report, StudyResult
from connector.push.reconcile_compare import Held, Sent, compare
from connector.push.registry_reader import RegistryReader, RegistryUnreachable
from devregistry import RegistryServer
from connector.store.state import STUDY_STATES
from connector.outbox.delivery import promote_delivered, record_study_outputs
from tests.push.conftest import Site, push_all, queue_site_study
from tests.support.net import free_port


def _sent() -> Sent:
    return Sent.from_manifest({"study_instance_uid": "2.25.1", "instance_count": 3,
                               "sop_instance_uids": ["2.25.11", "2.25.12", "2.25.13"],
                               "series": [{"series_instance_uid": "2.25.100", "modality": "CT", "instances": 2},
                                          {"series_instance_uid": "2.25.200", "modality": "PT", "instances": 1}]})


def _manifest(uids: list[str], study: str = "2.25.1") -> dict:
    return {"study_instance_uid": study, "sop_instance_uids": uids}


def test_everything_held_matches() -> None:
    sent = _sent()
    held = Held({"2.25.100": {"2.25.11", "2.25.12"}, "2.25.200": {"2.25.13"}}, _manifest(sorted(sent.sop_uids)), True)
    c = compare(sent, held)
    assert c.ok and c.missing == frozenset() and (c.series_short, c.unexpected, c.manifest) == (0, 0, "ok")


def test_a_missing_instance_is_named_and_its_series_counted_short() -> None:
    held = Held({"2.25.100": {"2.25.11"}, "2.25.200": {"2.25.13"}}, _manifest(["2.25.11", "2.25.12", "2.25.13"]), True)
    c = compare(_sent(), held)
    assert not c.ok and c.missing == {"2.25.12"} and c.series_short == 1 and c.manifest == "ok"


def test_an_instance_held_under_another_series_still_counts_as_held() -> None:
    held = Held({"2.25.100": {"2.25.11", "2.25.12", "2.25.13"}, "2.25.200": set()}, None, False)
    c = compare(_sent(), held)
    assert c.missing == frozenset() and c.series_short == 1 and c.ok  # held is held; the count is reported


def test_extra_instances_are_counted_not_a_mismatch() -> None:
    held = Held({"2.25.100": {"2.25.11", "2.25.12", "2.25.99"}, "2.25.200": {"2.25.13"}}, None, False)
    c = compare(_sent(), held)
    assert c.ok and c.unexpected == 1 and c.manifest == "unchecked"


@pytest.mark.parametrize(("manifest", "expected"), [
    (None, "missing"),
    (_manifest(["2.25.11", "2.25.12"]), "different"),
    (_manifest(["2.25.11", "2.25.12", "2.25.13"], study="2.25.9"), "different"),
])
def test_a_missing_or_different_manifest_is_a_mismatch(manifest, expected) -> None:
    held = Held({"2.25.100": {"2.25.11", "2.25.12"}, "2.25.200": {"2.25.13"}}, manifest, True)
    c = compare(_sent(), held)
    assert c.manifest == expected and not c.ok and c.missing == frozenset()


def test_without_the_json_api_only_instances_are_compared() -> None:
    held = Held({"2.25.100": {"2.25.11", "2.25.12"}, "2.25.200": {"2.25.13"}}, None, api=False)
    assert compare(_sent(), held).ok


def test_nothing_held_at_all() -> None:
    c = compare(_sent(), Held({}, None, True))
    assert c.missing == _sent().sop_uids and c.series_short == 2 and c.manifest == "missing"


def test_report_exit_status_and_no_identifiers() -> None:
    report = Report([StudyResult("k1", "verified"), StudyResult("k2", "requeued", missing=1, requeued=1)])
    assert report.ok and report.summary()["instances_requeued"] == 1
    assert [s["study"] for s in report.as_dict()["studies"]] == ["k2"]  # only what needs attention is listed
    report.results.append(StudyResult("k3", "unresolved", missing=2))
    assert not report.ok
    assert "verified" in STUDY_STATES and STUDY_STATES.index("verified") == STUDY_STATES.index("pushed") + 1


# -- against a live dev registry -----------------------------------------------------------------


def _pushed_study(site: Site, registry: RegistryServer, key: str = "k1"):
    study = site.deid_study(ct=4, pet=2)
    queue_site_study(site, study)
    push_all(site, site.config(registry.url))
    with site.store.write() as conn:
        conn.execute("INSERT INTO studies (study_key, study_uid, state, last_received_at) VALUES (?, ?, 'queued', ?)",
                     (key, "1.2.3." + key[-1], time.time()))
    record_study_outputs(site.store, key, [study.study_uid])
    assert promote_delivered(site.store) == [key]
    return study


def test_verified_then_a_lost_manifest_is_sent_again(site: Site, registry: RegistryServer) -> None:
    _pushed_study(site, registry)
    config = site.config(registry.url)
    report = Reconciler(config, site.store, site.layout).run()
    assert (report.count("verified"), report.api) == (1, True)
    row = site.store.study("k1")
    assert row["state"] == "verified" and row["verified_at"] == pytest.approx(time.time(), abs=60)

    with registry.store.write() as conn:  # the registry lost the manifest (not the images)
        conn.execute("DELETE FROM manifests")
    report = Reconciler(config, site.store, site.layout).run(include_verified=True)
    [result] = report.results
    assert (result.outcome, result.manifest, result.manifests_requeued, result.missing) == ("requeued", "missing", 1, 0)
    assert site.store.study("k1")["state"] == "queued" and site.store.study("k1")["verified_at"] is None
    push_all(site, config)
    assert promote_delivered(site.store) == ["k1"] or site.store.study("k1")["state"] == "pushed"
    assert registry.store.manifests()[0]["complete"]
    assert Reconciler(config, site.store, site.layout).run().count("verified") == 1


def test_a_lost_instance_without_its_original_is_reported_unresolved(site: Site, registry: RegistryServer) -> None:
    study = _pushed_study(site, registry)
    config = site.config(registry.url)
    assert Reconciler(config, site.store, site.layout).run().count("verified") == 1
    assert registry.store.delete_instance(min(study.sop_uids))
    engine = DeidEngine.from_rules(None, site.provider, site_id="TEST01", fsync=False)
    report = Reconciler(config, site.store, site.layout, engine_factory=lambda: engine).run(include_verified=True)
    [result] = report.results
    assert (result.outcome, result.missing, result.requeued) == ("unresolved", 1, 0) and not report.ok
    assert "no original left" in result.error
    row = site.store.study("k1")
    assert row["state"] == "pushed" and row["verified_at"] is None  # known incomplete: not verified any more


def test_unreachable_registry_changes_nothing(site: Site, registry: RegistryServer) -> None:
    _pushed_study(site, registry)
    config = site.config(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnreachable):
        Reconciler(config, site.store, site.layout).run()
    assert site.store.study("k1")["state"] == "pushed"


def test_only_the_studies_asked_for(site: Site, registry: RegistryServer) -> None:
    _pushed_study(site, registry, "k1")
    _pushed_study(site, registry, "k2")
    config = site.config(registry.url)
    report = Reconciler(config, site.store, site.layout).run(study_keys=["k2"])
    assert [r.study for r in report.results] == ["k2"]
    assert site.store.study("k1")["state"] == "pushed" and site.store.study("k2")["state"] == "verified"


def test_command_exit_codes(site: Site, registry: RegistryServer, monkeypatch, capsys, tmp_path) -> None:
    import json

    from connector.cli.main import main

    _pushed_study(site, registry)
    monkeypatch.delenv("SITE_CONNECTOR_CONFIG", raising=False)
    monkeypatch.setenv("SITE_CONNECTOR__STORAGE__DATA_DIR", str(site.layout.data_dir))
    monkeypatch.setenv("SITE_CONNECTOR__REGISTRY__TOKEN_FILE", str(site.token_file))
    monkeypatch.setenv("SITE_CONNECTOR__REGISTRY__URL", f"http://127.0.0.1:{free_port()}")
    assert main(["reconcile", "--json"]) == 3  # unreachable: nothing changed
    assert "not reachable" in capsys.readouterr().err and site.store.study("k1")["state"] == "pushed"
    assert main(["reconcile", "--study", "0" * 20]) == 2
    capsys.readouterr()
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    wrong.chmod(0o600)
    monkeypatch.setenv("SITE_CONNECTOR__REGISTRY__URL", registry.url)
    monkeypatch.setenv("SITE_CONNECTOR__REGISTRY__TOKEN_FILE", str(wrong))
    assert main(["reconcile"]) == 1 and "refused" in capsys.readouterr().err
    monkeypatch.setenv("SITE_CONNECTOR__REGISTRY__TOKEN_FILE", str(site.token_file))
    assert main(["reconcile", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["checked"], out["verified"], out["manifest_checked"]) == (1, 1, True)
    assert main(["reconcile"]) == 0 and "checked 0 studies" in capsys.readouterr().out
    assert main(["reconcile", "--all"]) == 0
    assert "checked 1 studies" in (text := capsys.readouterr().out) and "instances and manifests" in text
    status = main(["status", "--json"])
    assert status == 0 and json.loads(capsys.readouterr().out)["studies"]["verified"] == 1


def test_scheduled_runs_check_old_verifications_again(site: Site, registry: RegistryServer) -> None:
    _pushed_study(site, registry, "k1")
    _pushed_study(site, registry, "k2")
    config = site.config(registry.url)
    assert Reconciler(config, site.store, site.layout).run().count("verified") == 2
    week_ago = time.time() - 8 * 86400
    with site.store.write() as conn:
        conn.execute("UPDATE studies SET verified_at=? WHERE study_key='k1'", (week_ago,))
    reconciler = Reconciler(config, site.store, site.layout)
    assert reconciler.targets() == []
    cutoff = time.time() - config.registry.reconcile_recheck_days * 86400
    assert reconciler.targets(verified_before=cutoff) == ["k1"]
    report = reconciler.run(verified_before=cutoff)
    assert [(r.study, r.outcome) for r in report.results] == [("k1", "verified")]
    assert site.store.study("k1")["verified_at"] > week_ago + 86400


class _CappedServer(RegistryReader):
    """QIDO-RS answers cut at ``cap`` instances per page, honouring ``offset`` or not."""

    def __init__(self, held: list[str], cap: int, honour_offset: bool = True) -> None:
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(resolved_dicomweb_url="http://registry.invalid/dicomweb")
        self.held, self.cap, self.honour_offset = held, cap, honour_offset
        self.offsets: list[int] = []

    def _instance_page(self, url: str) -> set[str]:
        from urllib.parse import parse_qs, urlsplit

        offset = int(parse_qs(urlsplit(url).query).get("offset", ["0"])[0])
        self.offsets.append(offset)
        start = offset if self.honour_offset else 0
        return set(self.held[start:start + self.cap])


def test_a_series_cut_short_by_the_server_is_read_page_by_page() -> None:
    held = [f"2.25.{i}" for i in range(250)]
    server = _CappedServer(held, cap=100)
    assert server.instances("2.25.1", "2.25.2", expected=250) == set(held) and server.offsets == [0, 100, 200]
    server = _CappedServer(held[:249], cap=100)  # one lost: pages until one brings nothing new
    assert len(server.instances("2.25.1", "2.25.2", expected=250)) == 249 and server.offsets == [0, 100, 200, 249]
    server = _CappedServer(held, cap=1000)
    assert len(server.instances("2.25.1", "2.25.2", expected=250)) == 250 and server.offsets == [0]  # one request
    server = _CappedServer(held[:249], cap=1000, honour_offset=False)  # a server that ignores offset
    assert len(server.instances("2.25.1", "2.25.2", expected=250)) == 249 and server.offsets == [0, 249]


# -- regeneration from the originals on the spool (in process) -----------------------------------


def _ingested_and_pushed(site: Site, registry: RegistryServer):
    """A study received (originals on the spool, instances rows), de-identified, queued and pushed,
    the way the daemon's study worker does it."""
    import shutil

    import pydicom

    from connector.deid.study import deidentify_study
    from connector.push.queueing import queue_study
    from connector.store.state import InstanceRecord, instance_key
    from connector.synthetic import SyntheticStudy, write_pet_ct_study

    _, paths = write_pet_ct_study(site.root / "pacs", SyntheticStudy(), ct_count=4, pet_count=2, ct_rows=64)
    records = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rel = site.layout.incoming_relpath(instance_key(str(ds.SOPInstanceUID)))
        (site.layout.spool / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, site.layout.spool / rel)
        records.append(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                                      str(ds.SeriesInstanceUID), str(ds.Modality), "", rel, "", path.stat().st_size,
                                      "scp"))
    key = site.store.record_instances(records)[0].study_key
    engine = DeidEngine.from_rules(None, site.provider, site_id="TEST01", fsync=False)
    rows = site.store.study_instances(key)
    result = deidentify_study([site.layout.spool / r["path"] for r in rows], site.layout.outgoing / key,
                              site.layout.quarantine, engine)
    [study_uid] = result.study_uids
    files = [w.path for w in result.written]
    sent = {w.sop_instance_uid: w.path.read_bytes() for w in result.written}
    queue_study(site.outbox, study_uid=study_uid, pseudonym=result.pseudonyms[0], subject={"sex": "F"},
                files=files, layout=site.layout)
    record_study_outputs(site.store, key, [study_uid])
    site.store.set_study_state(key, "queued")
    push_all(site, site.config(registry.url))
    assert site.store.study(key)["state"] == "pushed"
    return key, engine, sent


def test_exactly_the_lost_instances_are_regenerated_byte_for_byte(site: Site, registry: RegistryServer) -> None:
    key, engine, sent = _ingested_and_pushed(site, registry)
    config = site.config(registry.url)
    lost = sorted(sent)[1:3]
    for uid in lost:
        assert registry.store.delete_instance(uid)
    before = registry.store.stats()["instances_stored"]
    report = Reconciler(config, site.store, site.layout, engine_factory=lambda: engine).run()
    [result] = report.results
    assert (result.outcome, result.missing, result.requeued, result.manifests_requeued) == ("requeued", 2, 2, 0)
    [job] = [j for j in site.outbox.lease("t", "registry", limit=10) if j.payload.get("resend")]
    assert sorted(i.ref for i in job.items) == lost
    for item in job.items:
        assert (site.layout.data_dir / item.path).read_bytes() == sent[item.ref]  # what was sent the first time
    site.outbox.reset_leases()
    assert site.store.study(key)["state"] == "queued"
    push_all(site, config)
    assert site.store.study(key)["state"] == "pushed"
    assert registry.store.stats()["instances_stored"] == before + 2
    assert Reconciler(config, site.store, site.layout).run().count("verified") == 1
    assert not list(site.layout.outgoing.glob("*.resend-*/*.dcm"))  # re-sent copies removed once acknowledged


def test_a_study_requeued_meanwhile_is_left_alone(site: Site, registry: RegistryServer) -> None:
    _key, engine, sent = _ingested_and_pushed(site, registry)
    assert registry.store.delete_instance(min(sent))

    class Racing(Reconciler):
        def regenerate(self, key: str, wanted: set[str], out_dir):
            written = super().regenerate(key, wanted, out_dir)
            site.store.set_study_state(key, "queued")  # another reconciliation got there first
            return written

    report = Racing(site.config(registry.url), site.store, site.layout, engine_factory=lambda: engine).run()
    [result] = report.results
    assert result.outcome == "unresolved" and "meanwhile" in result.error and result.requeued == 0
    assert not [j for j in site.outbox.lease("t", "registry", limit=10) if j.payload.get("resend")]
    assert not list(site.layout.outgoing.glob("*.resend-*"))  # its files were taken back


def test_status_shows_the_last_reconciliation(site: Site, registry: RegistryServer) -> None:
    from connector.cli.status_cmd import collect

    _pushed_study(site, registry)
    assert collect(site.layout)["last_reconciliation"] is None
    with pytest.raises(RegistryUnreachable):
        Reconciler(site.config(f"http://127.0.0.1:{free_port()}"), site.store, site.layout).run()
    last = collect(site.layout)["last_reconciliation"]
    assert last["registry_unreachable"] is True and last["checked"] == 0
    Reconciler(site.config(registry.url), site.store, site.layout).run()
    last = collect(site.layout)["last_reconciliation"]
    assert (last["checked"], last["verified"], last["requeued"]) == (1, 1, 0)
    assert last["at"] == pytest.approx(time.time(), abs=60) and "registry_unreachable" not in last


def test_a_resend_that_fails_leaves_the_study_pushed_not_verified(site: Site, registry: RegistryServer) -> None:
    study = _pushed_study(site, registry)
    config = site.config(registry.url)
    assert Reconciler(config, site.store, site.layout).run().count("verified") == 1
    assert registry.store.delete_instance(min(study.sop_uids))

    def no_linkage():
        raise OSError("linkage table unavailable")

    report = Reconciler(config, site.store, site.layout, engine_factory=no_linkage).run(include_verified=True)
    [result] = report.results
    assert (result.outcome, result.error, result.missing) == ("error", "resend-failed:OSError", 1) and not report.ok
    assert site.store.study("k1")["state"] == "pushed" and site.store.study("k1")["verified_at"] is None
