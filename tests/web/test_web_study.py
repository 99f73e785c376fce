"""The study page and its CAC picture, and ``site-connector study KEY``, on a real site and server.

The state is built through the stages' own store calls (intake, assemble, privacy report, study
outputs, outbox jobs acknowledged, reconciliation's verified_at); the scored-calcium map is written
with ``save_scored_calcium`` from a synthetic phantom, whose ground-truth lesion labels are what
the decoded PNG is checked against.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from connector.cli.main import main
from connector.infer.scored_calcium import ScoredCalcium, save_scored_calcium
from connector.outbox import Outbox
from connector.synthetic.phantoms import make_phantom
from connector.store.state import study_key
from connector.web import cac_picture
from connector.outbox.delivery import promote_delivered, record_study_outputs
from tests.web.conftest import WebSite

DEID_UID = "2.25.123456789"
PSEUDONYM = "WEBTEST-7K3M9QX2"


def scored_from_phantom(seed: int = 7, size: int = 192) -> tuple[ScoredCalcium, np.ndarray]:
    """The map the inference stage would write for a perfect model: the phantom's coronary lesions
    at >= 130 HU, each 2-D lesion weighted by its peak HU. Returns it and the full-volume lesion mask."""
    ph = make_phantom(seed, size=size, spacing=500.0 / size)
    lesions = ph.coronary & (ph.hu >= 130)
    keep = [z for z in range(lesions.shape[0]) if lesions[z].any()]
    assert keep, "the phantom has coronary calcium"
    weights = np.zeros((len(keep), size, size), dtype=np.uint8)
    for k, z in enumerate(keep):
        labels, count = ndimage.label(lesions[z])
        for lab in range(1, count + 1):
            peak = int(ph.hu[z][labels == lab].max())
            weights[k][labels == lab] = 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
    scored = ScoredCalcium(hu=ph.hu[keep], weights=weights, slice_indices=tuple(keep),
                           pixel_spacing_mm=(ph.pixel_spacing, ph.pixel_spacing), slice_increment_mm=ph.increment)
    return scored, lesions


def coloured(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])


def check_picture(png: bytes, scored: ScoredCalcium, lesions: np.ndarray) -> int:
    """Coloured pixels sit exactly on the phantom's lesions, in the colour of their weight; returns how many."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    rgb = np.asarray(image)
    tiles, (width, height) = cac_picture.layout_tiles(scored)
    assert rgb.shape == (height, width, 3)
    seen = np.zeros(rgb.shape[:2], dtype=bool)
    total = 0
    for tile in tiles:
        r0, c0, h, w = tile.crop
        rows, cols = h * tile.scale, w * tile.scale
        part = rgb[tile.y:tile.y + rows, tile.x:tile.x + cols]
        seen[tile.y:tile.y + rows, tile.x:tile.x + cols] = True
        truth = lesions[tile.slice_index]  # the phantom's own labels, at the slice the tile says
        assert truth[r0:r0 + h, c0:c0 + w].sum() == truth.sum()  # the cut keeps every lesion pixel
        assert np.array_equal(coloured(part), cac_picture.expand(tile, truth)), \
            f"slice {tile.slice_index}: colour off the lesions"
        for weight, colour in cac_picture.WEIGHT_COLOURS.items():
            where = cac_picture.expand(tile, scored.weights[tile.index]) == weight
            assert (part[where] == colour).all()
        total += int(truth.sum()) * tile.scale**2
    assert not coloured(rgb[~seen]).any()  # gaps between slices: no colour
    return total


def test_picture_from_a_phantom_map(tmp_path: Path) -> None:
    scored, lesions = scored_from_phantom()
    assert check_picture(cac_picture.render_png(scored), scored, lesions) > 0
    # grey window: water (0 HU) mid-grey-ish, fat dark, bone white
    assert list(cac_picture.grey(np.array([-1000, 0, 40, 1000]))) == [0, 102, 128, 255]
    # more scored slices than are drawn: those with the most calcium, still exactly coloured
    few = cac_picture.shown_slices(scored, limit=2)
    amount = (scored.weights > 0).reshape(scored.weights.shape[0], -1).sum(axis=1)
    assert sorted(amount[few]) == sorted(amount)[-2:]


def _site_with_a_pushed_study(site: WebSite, tmp_path: Path, pseudonym: str = PSEUDONYM) -> tuple[str, object]:
    """A study received, de-identified, scored, pushed (every job acknowledged) and verified."""
    PSEUDONYM = pseudonym  # noqa: N806  (the payloads below name it like the module constant)
    study, paths = site.receive(tmp_path / "s", ct=4, pet=2)
    key = study_key(study.study_uid)
    store = site.store
    store.mark_stable(0)
    store.record_privacy_report(key, {"tokens_replaced": 3})
    record_study_outputs(store, key, [DEID_UID])
    outbox = Outbox(store)
    t0 = time.time()
    outbox.enqueue("subject", f"{PSEUDONYM}#x", "registry", {"pseudonym": PSEUDONYM, "subject": {}}, group=PSEUDONYM)
    outbox.enqueue("stow", f"{DEID_UID}#a", "registry", {"study_instance_uid": DEID_UID, "instances": 5},
                   group=DEID_UID)
    outbox.enqueue("result", "r1", "registry", {"status": "ok", "agatston": 187.5, "category": "101-400",
                                                "volume_mm3": 150.0, "lesions": 3, "pseudonym": PSEUDONYM,
                                                "model": {"name": "cac-synthetic-v2"}}, group=DEID_UID)
    outbox.enqueue("manifest", f"{DEID_UID}#m", "registry", {"study_instance_uid": DEID_UID, "pseudonym": PSEUDONYM,
                                                            "instance_count": 5}, group=DEID_UID)
    for job in outbox.lease("w", "registry", limit=10):
        outbox.complete(job.id, "w", status=200)
    for job in outbox.lease("w", "registry", limit=10):  # the manifest, after the others
        outbox.complete(job.id, "w", status=200)
    store.set_study_state(key, "queued")
    assert promote_delivered(store) == [key]
    with store.write() as conn:
        conn.execute("UPDATE studies SET state='verified', verified_at=? WHERE study_key=?", (t0 + 5, key))
    site.quarantine_file("deid", "phi-guard:name", paths[-1])  # an original of this study
    site.quarantine_bytes("ingest", "not-dicom", b"junk")  # no study
    return key, study


def test_study_page(web_site: WebSite, tmp_path: Path) -> None:
    key, study = _site_with_a_pushed_study(web_site, tmp_path)
    scored, lesions = scored_from_phantom()
    save_scored_calcium(web_site.layout.scored_calcium_path(key, 0), scored)
    c = web_site.login()
    assert f'href="/studies/{key}"' in c.get("/studies").text
    r = c.get(f"/studies/{key}")
    assert r.status_code == 200
    page = r.text
    for step in ("first instance received", "last instance received", "stable", "de-identified", "CAC scored",
                 "pushed: stow", "pushed: manifest", "pushed: result", "pushed: subject",
                 "study pushed (every job acknowledged)", "verified with the registry"):
        assert f"<td>{step}</td>" in page, step
    assert PSEUDONYM in page and "187.5" in page and "101-400" in page
    assert "CT Image Storage" in page and "Positron Emission Tomography Image Storage" in page
    assert "phi-guard:name" in page and "not-dicom" not in page  # only this study's quarantine
    assert f'src="/studies/{key}/cac-0.png"' in page and "#cac-legend" not in page and 'id="cac-legend"' in page
    for secret in (study.patient.patient_id, study.patient.family, study.study_uid, study.accession):
        assert secret not in page
    png = c.get(f"/studies/{key}/cac-0.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["Cache-Control"] == "no-store"
    assert check_picture(png.content, scored, lesions) > 0
    assert c.get(f"/studies/{key}/cac-1.png").status_code == 404
    assert c.get("/studies/0123456789abcdef0123").status_code == 404
    assert c.get("/studies/../etc").status_code == 404
    assert web_site.client().get(f"/studies/{key}/cac-0.png").status_code == 303  # a login is needed


def test_study_page_without_a_map(web_site: WebSite, tmp_path: Path) -> None:
    study, _ = web_site.receive(tmp_path / "s", ct=2, pet=0)
    c = web_site.login()
    page = c.get(f"/studies/{study_key(study.study_uid)}").text
    assert 'id="cac-picture-absent"' in page and "not yet" in page


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_study_command(web_site: WebSite, tmp_path: Path) -> None:
    key, study = _site_with_a_pushed_study(web_site, tmp_path)
    save_scored_calcium(web_site.layout.scored_calcium_path(key, 0), scored_from_phantom()[0])
    config = tmp_path / "connector.toml"
    config.write_text(f'[storage]\ndata_dir = "{web_site.config.storage.data_dir}"\n')
    rc, out, err = _cli("-c", str(config), "study", key, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["study"] == key and doc["state"] == "verified" and doc["pseudonym"] == PSEUDONYM
    assert [s["modality"] for s in doc["series"]] == ["CT", "PT"] and [s["instances"] for s in doc["series"]] == [4, 2]
    assert doc["cac"][0]["agatston"] == 187.5 and doc["cac_maps"] == [0]
    assert [q["reason"] for q in doc["quarantined"]] == ["phi-guard:name"]
    whats = [s["what"] for s in doc["journey"]]
    assert whats[0] == "first instance received" and whats[-1] == "verified with the registry"
    rc, out, err = _cli("-c", str(config), "study", key[:8], "--png", str(tmp_path / "pic"))
    assert rc == 0, err
    assert "verified" in out and PSEUDONYM in out and "Agatston 187.5" in out
    assert (tmp_path / "pic" / f"{key}-cac-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in (out, json.dumps(doc)):
        assert study.patient.patient_id not in text and study.study_uid not in text
    assert _cli("-c", str(config), "study", "ffffffffffffffffffff")[0] == 1
