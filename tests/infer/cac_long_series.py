"""A long CTAC-like series for memory checks, and peak RSS of scoring it in a fresh process.

Why: a whole-body CT attenuation-correction scan can have 2,000 slices of 512²; the heart is a
few dozen of them. The series here is a rendered chest phantom (its heart and plaques) padded with
slices of body-only anatomy below (upper abdomen: lungs replaced by soft tissue) and above (neck),
so scoring must walk every slice but finds the heart only in the middle. Shared by
``tests/infer/test_cac_memory.py`` and ``tests/benchmarks/bench_cac.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from connector.synthetic.phantom_series import write_phantom_series
from connector.synthetic.phantoms import make_phantom

ROOT = Path(__file__).resolve().parents[2]


def padded_volume(slices: int, seed: int = 123) -> tuple[np.ndarray, np.ndarray, float]:
    """(hu int16 (slices, 512, 512), z positions, pixel spacing): a chest phantom padded to ``slices``."""
    ph = make_phantom(seed, plaque_count=8, increment=3.0)
    chest = ph.hu
    if slices <= len(chest):
        chest = chest[:slices]
        return chest, np.asarray(ph.z_positions[:slices]), float(ph.pixel_spacing)
    below = (slices - len(chest)) // 2
    above = slices - len(chest) - below
    abdomen = chest[0].copy()
    abdomen[(abdomen < -500) & ndimage.binary_fill_holes(chest[0] > -500)] = 55  # lungs gone: liver
    neck = chest[-1].copy()
    neck[(neck < -500) & ndimage.binary_fill_holes(chest[-1] > -500)] = 40
    rng = np.random.default_rng(seed)
    noise = [rng.integers(-12, 13, size=abdomen.shape, dtype=np.int16) for _ in range(4)]
    low = [abdomen + noise[k % 4] for k in range(below)]
    high = [neck + noise[k % 4] for k in range(above)]
    hu = np.concatenate([np.asarray(low, dtype=np.int16).reshape(-1, *abdomen.shape), chest,
                         np.asarray(high, dtype=np.int16).reshape(-1, *abdomen.shape)])
    z0 = float(ph.z_positions[0]) - below * ph.increment
    return hu, z0 + ph.increment * np.arange(slices), float(ph.pixel_spacing)


def write_long_series(folder: Path, slices: int, seed: int = 123) -> list[Path]:
    hu, z, spacing = padded_volume(slices, seed)
    return write_phantom_series(hu, z, spacing, folder)


def peak_rss_of_cac(folder: Path, *, model_dir: Path | None = None, threads: int = 2,
                    timeout: float = 600.0) -> dict[str, object]:
    """Score ``folder`` with ``site-connector cac --json`` semantics in a fresh Python process and return
    {"vmhwm_mb": peak resident MB (VmHWM), "result": the series' JSON}."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from connector.infer.runner import CacRunner\n"
        "from connector.infer.study import score_study\n"
        "from connector.settings.cac import CacConfig\n"
        "folder, model, threads = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])\n"
        "runner = CacRunner.from_config(CacConfig(model_dir=Path(model) if model else None, threads=threads,"
        " providers=['CPUExecutionProvider']))\n"
        "files = sorted(p for p in folder.rglob('*') if p.is_file())\n"
        "results = score_study(files, runner)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'vmhwm_mb': int(hwm) / 1024, 'result': results[0].to_json(include_uids=False)}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(model_dir or ""), str(threads)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
