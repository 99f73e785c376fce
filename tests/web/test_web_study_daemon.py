"""The study page and the search end to end: storescu -> daemon (CAC on) -> dev registry, then the
dashboard of the running daemon, the way a coordinator would use it.

A synthetic PET/CT study whose CT is a chest phantom with coronary calcium is sent by C-STORE; once
the registry holds everything, the study page shows its journey (received ... CAC ... each push),
the pseudonym and the Agatston score the registry received; after ``reconcile`` it shows verified.
The coordinator finds it by MRN and issuer. The CAC picture is drawn from the scored-calcium map
the daemon's inference stage writes (issue 15); its coloured pixels must lie on the phantom's lesions.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from connector.infer.scored_calcium import load_scored_calcium
from connector.synthetic.phantoms import make_phantom
from devregistry import RegistryServer
from connector.synthetic import SyntheticStudy, write_demo_study
from connector.web.users import UserFile
from connector.web import cac_picture
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import identifiers, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess
from tests.web.conftest import COORD, COORD_PASSWORD, csrf_of
from tests.web.test_web_study import coloured

pytestmark = pytest.mark.slow

CT_SLICES = 48


def _login(url: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    r = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "username": COORD, "password": COORD_PASSWORD})
    assert r.status_code == 303, r.status_code
    return c


def test_study_page_and_search_against_the_running_daemon(tmp_path: Path) -> None:
    study = SyntheticStudy()
    files = write_demo_study(tmp_path / "pacs", ct_slices=CT_SLICES, study=study)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, registry__reconcile_interval_minutes=0)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            UserFile(daemon.data_dir / "web" / "users.json").add(COORD, COORD_PASSWORD, role="coordinator")
            storescu(daemon.port, files)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"].get("pushed") == 1,
                     timeout=300, interval=0.5)
            [subject] = registry.store.subjects()
            [result] = registry.store.records("results")
            c = _login(f"http://127.0.0.1:{daemon.http_port}")

            # the coordinator finds the patient by MRN and issuer, and opens the study from the results
            token_ = csrf_of(c.get("/search").text)
            found = c.post("/search", data={"csrf": token_, "by": "patient", "patient_id": study.patient.patient_id,
                                            "issuer": study.patient.issuer})
            assert found.status_code == 200 and subject["pseudonym"] in found.text
            [key] = re.findall(r'href="/studies/([0-9a-f]{20})"', found.text)
            page = c.get(f"/studies/{key}").text
            for step in ("first instance received", "last instance received", "stable", "de-identified",
                         "CAC scored", "pushed: subject", "pushed: stow", "pushed: result", "pushed: manifest",
                         "study pushed (every job acknowledged)"):
                assert f"<td>{step}</td>" in page, step
            assert subject["pseudonym"] in page
            assert f"Agatston {result['agatston']} ({result['category']})" in page
            assert re.search(r"<td>CT</td>.*?<td class=\"num\">%d</td>" % CT_SLICES, page, re.S)

            proc = daemon.cli("reconcile", "--json")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "<td>verified with the registry</td>" in c.get(f"/studies/{key}").text
            shown = json.loads(daemon.cli("study", key, "--json", check=True).stdout)
            assert shown["state"] == "verified" and shown["pseudonym"] == subject["pseudonym"]

            texts = [found.text, page, json.dumps(shown)]
            for needle in identifiers(study):
                for text in texts:
                    assert needle.decode() not in text

            map_path = daemon.data_dir / "results" / key / "cac-0.npz"
            assert map_path.exists(), "the inference stage keeps the scored-calcium map of each scored series"
            assert 'src="/studies/%s/cac-0.png"' % key in page
            png = c.get(f"/studies/{key}/cac-0.png")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            _picture_on_the_phantom_lesions(png.content, load_scored_calcium(map_path))
    finally:
        registry.stop()


def _picture_on_the_phantom_lesions(png: bytes, scored: object) -> None:
    """Each drawn slice is matched to the phantom slice with the same HU, and the coloured pixels to
    the phantom's coronary lesion labels (the model's map, so allow its edges: 90 % inside)."""
    phantom = make_phantom(7, plaque_count=4, n_slices=CT_SLICES)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    tiles, _ = cac_picture.layout_tiles(scored)  # type: ignore[arg-type]
    inside = total = 0
    for tile in tiles:
        hu = scored.hu[tile.index]  # type: ignore[attr-defined]
        diffs = [float(np.abs(phantom.hu[z].astype(np.float32) - hu).mean()) for z in range(phantom.hu.shape[0])]
        z = int(np.argmin(diffs))
        assert diffs[z] < 1.0, "each drawn slice is a slice of the phantom (same HU)"
        truth = cac_picture.expand(tile, phantom.coronary[z])
        r0, c0, h, w = tile.crop
        part = rgb[tile.y:tile.y + h * tile.scale, tile.x:tile.x + w * tile.scale]
        painted = coloured(part)
        inside += int((painted & truth).sum())
        total += int(painted.sum())
    assert total > 0 and inside >= 0.9 * total, (inside, total)
