"""Benchmark of the linkage table: subject creations/s, lookups/s and file size at 100,000 subjects.

Peers, measured in the same run:
  * decrypting scan: what a lookup costs without the blind index (decrypt patient IDs until a match);
  * EphemeralIdentityProvider: the in-memory test provider (no disk, no encryption) as a ceiling.
The O(1) claim is checked by comparing lookups/s at 1,000 and at N subjects.

Bulk creation runs with ``[storage] fsync = false`` (SQLite synchronous=NORMAL in WAL: durable across a
process crash, not a power cut); a smaller sample with fsync on shows the production cost per new
patient, which the daemon pays once per patient. Run: python tests/benchmarks/bench_linkage.py [-n N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connector.config import load_config  # noqa: E402
from connector.deid.provider import EphemeralIdentityProvider, PatientIdentity  # noqa: E402
from connector.linkage import OpenOptions, create_key_file, open_linkage  # noqa: E402
from connector.linkage.paths import default_key_path  # noqa: E402
from connector.linkage.crypto import build_ad, normalise_identifier  # noqa: E402
from connector.linkage.rotation import rotate_key  # noqa: E402


def patient(i: int) -> PatientIdentity:
    return PatientIdentity(f"SYN{i:09d}", "SYNTH-HOSPITAL", f"SYNTHFAMILY{i}^GIVEN", "19470312", "F")


def open_site(root: Path, fsync: bool):  # type: ignore[no-untyped-def]
    root.mkdir(parents=True)
    cfg = root / "connector.toml"
    cfg.write_text(f'[storage]\ndata_dir = "data"\nfsync = {"true" if fsync else "false"}\n')
    config = load_config(cfg, environ={})
    create_key_file(default_key_path(config))
    return open_linkage(config, OpenOptions(role="bench"))


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def lookup_rate(provider, population: int, samples: int) -> float:  # type: ignore[no-untyped-def]
    picks = [random.randrange(population) for _ in range(samples)]

    def run() -> None:
        for i in picks:
            p = patient(i)
            assert provider.lookup_patient(p.patient_id, p.issuer, audit=False) is not None

    return rate(samples, timed(run))


def scan_lookup_rate(provider, population: int, samples: int) -> float:  # type: ignore[no-untyped-def]
    """The peer: find a patient by decrypting every row's patient ID (what a blind index avoids)."""
    store = provider.store
    crypto = store._crypto
    picks = [random.randrange(population) for _ in range(samples)]

    def run() -> None:
        db = store.db()
        for i in picks:
            want = normalise_identifier(patient(i).patient_id)
            for pseudonym, bidx, blob in db.execute("SELECT pseudonym, blind_index, patient_id FROM subjects"):
                ad = build_ad("subjects", "patient_id", pseudonym, bytes(bidx))
                if normalise_identifier(crypto.cipher.decrypt(blob, ad)) == want:
                    break
            else:
                raise AssertionError("not found")

    return rate(samples, timed(run))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--subjects", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--no-rotate", action="store_true", help="skip timing rotate-key over all subjects")
    args = ap.parse_args()
    n = args.subjects
    random.seed(7)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-linkage-") as tmp:
        tmp_path = Path(tmp)

        # production durability sample (fsync on): cost per new patient
        sample = min(2_000, n)
        with open_site(tmp_path / "durable", fsync=True) as p:
            t = timed(lambda: [p.subject_for(patient(i)) for i in range(sample)])
        durable_create = rate(sample, t)

        with open_site(tmp_path / "bulk", fsync=False) as p:
            small = min(1_000, n)
            t_small = timed(lambda: [p.subject_for(patient(i), study_date="20240115") for i in range(small)])
            lookups_small = lookup_rate(p, small, min(args.lookups, 20_000))
            t_rest = timed(lambda: [p.subject_for(patient(i), study_date="20240115") for i in range(small, n)])
            create = rate(n, t_small + t_rest)
            lookups_n = lookup_rate(p, n, args.lookups)
            hot = random.sample(range(n), min(args.lookups, n))
            existing = rate(len(hot), timed(lambda: [p.subject_for(patient(i), study_date="20240115") for i in hot]))
            scan_samples = 3
            scan = scan_lookup_rate(p, n, scan_samples)
            p.store.checkpoint()
            db_bytes = p.paths.db.stat().st_size
            wal = Path(f"{p.paths.db}-wal")
            wal_bytes = wal.stat().st_size if wal.exists() else 0
            rotate_s = None if args.no_rotate else timed(lambda: rotate_key(p))
            assert p.store.counts()["subjects"] == n

        eph = EphemeralIdentityProvider("SITE01")
        eph_create = rate(n, timed(lambda: [eph.subject_for(patient(i)) for i in range(n)]))
        eph_lookup = rate(args.lookups, timed(lambda: [eph.subject_for(patient(random.randrange(n))) for _ in range(args.lookups)]))

    rows = [
        ("subjects", f"{n:,}"),
        ("creations/s (fsync off, bulk)", f"{create:,.0f}"),
        ("creations/s (fsync on, first 2,000)", f"{durable_create:,.0f}"),
        ("subject_for existing patient/s", f"{existing:,.0f}"),
        (f"lookups/s at {min(1_000, n):,} subjects", f"{lookups_small:,.0f}"),
        (f"lookups/s at {n:,} subjects (blind index)", f"{lookups_n:,.0f}"),
        (f"lookups/s at {n:,} (peer: decrypting scan)", f"{scan:,.2f}"),
        ("ephemeral in-memory creations/s (peer)", f"{eph_create:,.0f}"),
        ("ephemeral in-memory lookups/s (peer)", f"{eph_lookup:,.0f}"),
        ("database file", f"{db_bytes / 2**20:,.1f} MiB ({db_bytes / n:,.0f} B/subject), WAL {wal_bytes:,} B"),
    ]
    if rotate_s is not None:
        rows.append((f"rotate-key over {n:,} subjects", f"{rotate_s:,.1f} s"))
    width = max(len(k) for k, _ in rows)
    print(f"{'linkage benchmark':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print()
    print(f"ratio blind-index lookup / decrypting scan      : {lookups_n / scan:,.0f}x")
    print(f"ratio lookups/s at {n:,} / at {min(1_000, n):,} (1.0 = O(1)) : {lookups_n / lookups_small:.2f}")
    print(f"ratio creations/s linkage / ephemeral in-memory : {create / eph_create:.3f}")
    print(f"ratio lookups/s linkage / ephemeral in-memory   : {lookups_n / eph_lookup:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
