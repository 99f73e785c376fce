"""ONNX Runtime session for the CAC model, and the volume -> mask -> Agatston pipeline around it.

Why one long-lived runner: creating a session (graph optimisation, provider initialisation, CUDA
context) costs far more than scoring one CTAC volume, so the daemon builds one :class:`CacRunner`
at start-up and reuses it for every study; ``InferenceSession.run`` is thread-safe.

From the model's low-resolution class probabilities to an exact score: each output cell becomes a
mark, CORONARY where the coronary-calcium probability and the heart probability both reach the
manifest's threshold, OTHER where the model says non-coronary calcium (or coronary-looking calcium
outside the heart), and every candidate lesion (8-connected HU >= 130 pixels on a slice) is chosen
or not from the marks on its pixels by :func:`connector.infer.agatston.select_coronary` (the
lesion-level rule, documented there). A chosen lesion is scored whole: its edges come from the HU
values, not from the model's grid.

Memory (issue 29, item 4): the model runs batch by batch and only its marks are kept (one byte a
cell at the output stride); full-resolution masks and weights exist only on the heart's slices. With
a streamed series (:class:`connector.infer.volume.SliceStack`) nothing here grows with the slice
count beyond the marks. Speed: the model runs only on the slices the score depends on (the heart
region's, and those its lesions continue into: :meth:`CacRunner.region_marks`), with the same
score. docs/cac.md, "Memory and speed".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from connector.infer.agatston import (
    CORONARY,
    NO_MARK,
    OTHER,
    AgatstonResult,
    MarkLookup,
    UnitCache,
    agatston,
    lesion_reach,
    select_coronary,
)
from connector.infer.errors import ModelError
from connector.infer.heart_region import HeartRegion, find_heart
from connector.infer.manifest import ModelManifest, load_verified_model
from connector.infer.preprocess import (
    AIR_HU,
    GridMap,
    body_box,
    neighbour_indices,
    window_channels,
)
from connector.infer.results import SeriesResult, Timings
from connector.infer.scored_calcium import scored_calcium_of
from connector.settings.cac import CacConfig
from connector.infer.volume import CtVolume

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CROP_MARGIN_PX = 32  # air kept around the body when a model accepts cropped inputs


@dataclass(frozen=True)
class Segmentation:
    """Model outputs for a volume on the output grid, plus the series -> output grid index maps."""

    heart: np.ndarray  # (slices, h, w) heart probability
    coronary: np.ndarray  # (slices, h, w) coronary-calcium probability
    other: np.ndarray  # (slices, h, w) non-coronary calcium probability (sum of the other calcium classes)
    rows: np.ndarray  # series row -> output row, -1 outside the model's field of view
    cols: np.ndarray  # series column -> output column, -1 outside
    crop: tuple[int, int, int, int]  # model-grid rows/columns actually run (r0, r1, c0, c1)


@dataclass(frozen=True)
class MarkGrid:
    """The model's marks (CORONARY, OTHER, NO_MARK) on its output grid, (slices, h, w) uint8, plus the
    series -> output grid index maps: all that scoring keeps of the model's outputs (16 kB a slice at
    stride 4, where the probabilities took 192 kB)."""

    marks: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    crop: tuple[int, int, int, int]
    run: np.ndarray | None = None  # series slices whose marks the model computed (None: every slice)

    def lookup(self) -> MarkLookup:
        """The marks of series pixels (NO_MARK beyond the model's field of view)."""
        outside = (self.rows < 0)[:, None] | (self.cols < 0)[None, :]
        rows, cols, grid = np.clip(self.rows, 0, None), np.clip(self.cols, 0, None), self.marks

        def lookup(k: int, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
            return np.where(outside[rr, cc], NO_MARK, grid[k][rows[rr], cols[cc]])

        return lookup


@dataclass
class _MarkState:
    """Marks being filled in plane by plane (:meth:`CacRunner.region_marks`)."""

    grid: GridMap
    crop: tuple[int, int, int, int]
    back: np.ndarray | None  # model plane of each series slice (None: the same)
    marks: np.ndarray  # (model planes, h, w) uint8, NO_MARK where not run
    done: np.ndarray  # (model planes,) bool


@dataclass(frozen=True)
class ScoredVolume:
    agatston: AgatstonResult
    slab: np.ndarray  # coronary-calcium mask the score was computed in, on slices first .. first + len - 1
    first: int
    slices: int  # of the whole volume
    inference_s: float
    scoring_s: float
    crop: tuple[int, int, int, int]
    heart_found: bool = True  # False: no heart in the scan (connector.infer.heart_region); nothing scored
    model_slices: int = 0  # series slices the model was run on (their marks computed)

    @property
    def mask(self) -> np.ndarray:
        """The mask on the whole volume (tests, tools: the runtime keeps only the heart's slices)."""
        out = np.zeros((self.slices, *self.slab.shape[1:]), dtype=bool)
        out[self.first : self.first + len(self.slab)] = self.slab
        return out


def _class_sum(p: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Probability of any of ``classes`` (N, C, h, w) -> (N, h, w); one class is taken as is (bit for bit)."""
    return p[:, classes[0]] if len(classes) == 1 else p[:, list(classes)].sum(axis=1)


def choose_providers(requested: Sequence[str]) -> list[str]:
    """Providers to ask ORT for: the configured ones that exist here, else CUDA when present; CPU last."""
    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        if not chosen:
            raise ModelError(
                "provider_unavailable",
                f"none of the configured providers {list(requested)} is available (available: {available})",
            )
    else:
        chosen = [CUDA] if CUDA in available else []
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


class CacRunner:
    """A verified model loaded into one ONNX Runtime session, plus the scoring around it."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession, config: CacConfig) -> None:
        self.manifest = manifest
        self.session = session
        self.config = config
        self.provider = session.get_providers()[0]
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        wanted_out = {manifest.output.calcium} | ({manifest.output.heart} if manifest.output.heart else set())
        if manifest.input.name not in inputs or not wanted_out <= outputs:
            raise ModelError("model_io_mismatch", "the model's input/output names differ from its manifest")
        rank = next(len(i.shape) for i in session.get_inputs() if i.name == manifest.input.name)
        if rank != (5 if manifest.input.layout == "3d" else 4):
            raise ModelError("model_io_mismatch",
                             f"the model's input has {rank} dimensions; input.layout {manifest.input.layout} needs "
                             f"{5 if manifest.input.layout == '3d' else 4}")

    @classmethod
    def from_config(cls, config: object) -> CacRunner:
        """Build from the root ``Config`` (uses ``config.cac``) or a ``CacConfig``."""
        cac = config if isinstance(config, CacConfig) else config.cac  # type: ignore[attr-defined]
        manifest, blob = load_verified_model(cac.model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cac.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # No busy-waiting between ops: the daemon shares the CPU with reception and de-identification.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(cac.providers)
        try:
            session = ort.InferenceSession(blob, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types
            raise ModelError(
                "model_load_failed", f"ONNX Runtime could not load the model ({type(exc).__name__})"
            ) from None
        runner = cls(manifest, session, cac)
        log.info("cac model loaded: %s %s provider=%s", manifest.name, manifest.version, runner.provider)
        return runner

    @classmethod
    def load(cls, model_dir: Path | None = None, **settings: object) -> CacRunner:
        """Convenience for tests and tools: a runner from a model folder and CacConfig overrides."""
        return cls.from_config(CacConfig(model_dir=model_dir, **settings))  # type: ignore[arg-type]

    # -----------------------------------------------------------------------------------------

    def _crop(self, hu: np.ndarray, grid: GridMap) -> tuple[int, int, int, int]:
        spec = self.manifest.input
        if not spec.size_multiple:
            return 0, spec.in_plane_size, 0, spec.in_plane_size
        # body_box of the model grid's maximum over slices: resampling picks pixels (and fills air
        # beyond the series), so that is the model grid of the series' maximum, one slice not all
        return body_box(grid.to_model(hu.max(axis=0)[None], AIR_HU), spec.size_multiple, CROP_MARGIN_PX)

    def _channels(self, planes: np.ndarray) -> list[np.ndarray]:
        """The windowed channels of resampled planes (..., H, W), one per manifest window."""
        return window_channels(planes, self.manifest.input.windows)

    def plane_map(self, n: int, slice_increment: float | None) -> np.ndarray:
        """Series slice of each model plane along z: the identity except for a 3d model that declares
        ``slice_spacing_mm`` (nearest slice, planes from the first slice to the last)."""
        sz = self.manifest.input.slice_spacing_mm
        if self.manifest.input.layout != "3d" or sz is None or not slice_increment or \
                abs(sz - slice_increment) <= 0.01 * sz:
            return np.arange(n)
        planes = int(np.floor((n - 1) * slice_increment / sz + 1e-6)) + 1
        return np.clip(np.rint(np.arange(planes) * sz / slice_increment).astype(np.int64), 0, n - 1)

    def _samples(
        self, n_planes: int, wanted: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per batch: (planes scored, the model plane of each sample position, where each scored plane's
        output lies as (sample, depth index)). 2d/2.5d: one sample per plane; 3d: patches of ``depth``
        planes, consecutive ones sharing ``overlap``, each plane's output taken from the patch where it
        lies most central (edge planes repeat where the series is shorter than a patch).

        ``wanted`` (sorted model planes; None: all): only the samples that score them, built exactly
        as for the whole series (the same neighbours, the same patches), so each plane's output is the
        same; a 3d patch scores all the planes it owns."""
        spec, batch = self.manifest.input, self.config.batch_size
        if spec.layout != "3d":
            todo = np.arange(n_planes) if wanted is None else np.asarray(wanted, dtype=np.int64)
            for start in range(0, len(todo), batch):
                centres = todo[start : start + batch]
                around = neighbour_indices(n_planes, centres, spec.slices_per_sample)
                yield centres, around, np.stack([np.arange(len(centres)), np.zeros(len(centres), int)], axis=1)
            return
        depth, step = spec.slices_per_sample, spec.slices_per_sample - spec.patch_overlap
        starts = list(range(0, max(n_planes - depth, 0) + 1, step))
        if starts[-1] + depth < n_planes:
            starts.append(n_planes - depth)
        starts_a = np.asarray(starts)
        j = np.arange(n_planes)[:, None]
        centrality = np.minimum(j - starts_a[None], starts_a[None] + depth - 1 - j)
        centrality = np.where(centrality >= 0, centrality, -depth)  # outside the patch
        owner = centrality.argmax(axis=1)  # patch that scores each plane
        per = max(1, batch // depth)
        patches = np.arange(len(starts)) if wanted is None else np.unique(owner[np.asarray(wanted, dtype=np.int64)])
        for b0 in range(0, len(patches), per):
            idx = patches[b0 : b0 + per]
            around = np.clip(starts_a[idx, None] + np.arange(depth)[None], 0, n_planes - 1)
            planes = np.flatnonzero(np.isin(owner, idx))
            where = np.stack([np.searchsorted(idx, owner[planes]), planes - starts_a[owner[planes]]], axis=1)
            yield planes, around, where

    def _grid_and_crop(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float]
    ) -> tuple[GridMap, tuple[int, int, int, int]]:
        spec = self.manifest.input
        grid = GridMap.build(hu.shape[1:], pixel_spacing, spec.in_plane_size, spec.pixel_spacing_mm)
        return grid, self._crop(hu, grid)

    def _outputs(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None = None,
        wanted: np.ndarray | None = None, prepared: tuple[GridMap, tuple[int, int, int, int]] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, GridMap, tuple[int, int, int, int]]]:
        """Per batch: (model planes, heart, coronary and non-coronary calcium probabilities on them
        (planes, h, w), grid, crop); the manifest's layout says how samples are built, its output kind
        how the probabilities are read. Each batch's slices are resampled and windowed on their own, so
        no float32 copy of the volume exists. ``wanted``: only these model planes (and those a 3d patch
        scores with them); ``prepared``: the grid and crop, computed once for the whole series."""
        spec, out = self.manifest.input, self.manifest.output
        grid, crop = prepared if prepared is not None else self._grid_and_crop(hu, pixel_spacing)
        r0, r1, c0, c1 = crop
        z = self.plane_map(hu.shape[0], slice_increment)
        names = [out.calcium] + ([out.heart] if out.heart else [])
        for planes, around, where in self._samples(len(z), wanted):
            needed, inverse = np.unique(z[around], return_inverse=True)
            inverse = inverse.reshape(around.shape)
            channels = self._channels(grid.to_model(hu[needed], AIR_HU)[:, r0:r1, c0:c1])
            if spec.layout == "3d":  # (patches, windows, depth, H, W)
                sample = np.stack([ch[inverse] for ch in channels], axis=1)
            elif len(channels) == 1:  # v1/v2: (N, slices, H, W), as before
                sample = channels[0][inverse]
            else:  # (N, slices * windows, H, W), slice-major
                sample = np.stack([ch[inverse] for ch in channels], axis=2)
                sample = sample.reshape(len(around), -1, *sample.shape[-2:])
            results = self.session.run(names, {spec.name: sample})
            p_calcium, p_heart = results[0], (results[1] if out.heart else None)
            if spec.layout == "3d":  # (N, C, D, h, w) -> (planes, C, h, w)
                p_calcium = p_calcium[where[:, 0], :, where[:, 1]]
                p_heart = p_heart[where[:, 0], :, where[:, 1]] if p_heart is not None else None
            if out.kind == "probability+heart":
                coronary, other = p_calcium[:, 0], None
            elif out.labels:  # class indices: a cell's probability of its own class is 1
                label = p_calcium[:, 0]
                coronary = np.isin(label, out.coronary_classes).astype(np.float32)
                other = np.isin(label, out.noncoronary_classes).astype(np.float32) if out.noncoronary_classes else None
            else:
                coronary = _class_sum(p_calcium, out.coronary_classes)
                other = _class_sum(p_calcium, out.noncoronary_classes) if out.noncoronary_classes else None
            yield planes, (p_heart[:, 0] if p_heart is not None else None), coronary, other, grid, crop

    def _index_maps(self, grid: GridMap) -> tuple[np.ndarray, np.ndarray]:
        stride = self.manifest.output.stride
        rows = np.where(grid.series_rows >= 0, grid.series_rows // stride, -1)
        cols = np.where(grid.series_cols >= 0, grid.series_cols // stride, -1)
        return rows, cols

    def _series_planes(self, n: int, slice_increment: float | None) -> np.ndarray | None:
        """Model plane of each series slice (nearest), or None where they are the same."""
        z = self.plane_map(n, slice_increment)
        if len(z) == n and (z == np.arange(n)).all():
            return None
        sz, inc = self.manifest.input.slice_spacing_mm, slice_increment
        assert sz is not None and inc
        return np.clip(np.rint(np.arange(n) * inc / sz).astype(np.int64), 0, len(z) - 1)

    def segment(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None = None
    ) -> Segmentation:
        """The model's probabilities for every slice, batched (tests, tools; the runtime keeps only the
        marks: :meth:`mark_grid`). Without a heart output the heart probability reads 1 (no gating);
        without a non-coronary one, 0."""
        spec, out = self.manifest.input, self.manifest.output
        planes_n = len(self.plane_map(hu.shape[0], slice_increment))
        size, s = spec.in_plane_size // out.stride, out.stride
        heart = np.zeros((planes_n, size, size), dtype=np.float32)
        coronary = np.zeros((planes_n, size, size), dtype=np.float32)
        other = np.zeros((planes_n, size, size), dtype=np.float32)
        grid, crop = None, (0, 0, 0, 0)
        for planes, p_heart, p_coronary, p_other, grid, crop in self._outputs(hu, pixel_spacing, slice_increment):
            r0, r1, c0, c1 = crop
            at = (planes, slice(r0 // s, r1 // s), slice(c0 // s, c1 // s))
            heart[at] = p_heart if p_heart is not None else 1.0
            coronary[at] = p_coronary
            if p_other is not None:
                other[at] = p_other
        assert grid is not None
        back = self._series_planes(hu.shape[0], slice_increment)
        if back is not None:
            heart, coronary, other = heart[back], coronary[back], other[back]
        rows, cols = self._index_maps(grid)
        return Segmentation(heart=heart, coronary=coronary, other=other, rows=rows, cols=cols, crop=crop)

    def marks(self, seg: Segmentation) -> np.ndarray:
        """Mark codes on the output grid: CORONARY, OTHER or NO_MARK per cell (slices, h, w) uint8."""
        return self._mark_codes(seg.heart, seg.coronary, seg.other)

    def _mark_codes(
        self, heart: np.ndarray | None, coronary_p: np.ndarray, other_p: np.ndarray | None
    ) -> np.ndarray:
        """CORONARY where the coronary-calcium probability reaches the calcium threshold and the heart
        probability (if the model has one) the heart threshold; OTHER where calcium is marked but not
        coronary, or the non-coronary probability reaches the calcium threshold."""
        out = self.manifest.output
        t = out.threshold
        coronary = coronary_p >= t
        if heart is not None:
            coronary &= heart >= out.heart_cut
        other = coronary_p >= t
        if other_p is not None:
            other |= other_p >= t
        other &= ~coronary
        return np.where(coronary, CORONARY, np.where(other, OTHER, NO_MARK)).astype(np.uint8)

    def _mark_state(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None
    ) -> _MarkState:
        spec, out = self.manifest.input, self.manifest.output
        size = spec.in_plane_size // out.stride
        grid, crop = self._grid_and_crop(hu, pixel_spacing)
        z = self.plane_map(hu.shape[0], slice_increment)
        return _MarkState(grid=grid, crop=crop, back=self._series_planes(hu.shape[0], slice_increment),
                          marks=np.zeros((len(z), size, size), dtype=np.uint8),  # NO_MARK where not run
                          done=np.zeros(len(z), dtype=bool))

    def _run_marks(self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None,
                   state: _MarkState, slices: np.ndarray | None) -> None:
        """Run the model for the planes of series ``slices`` not run yet (None: every plane)."""
        s = self.manifest.output.stride
        if slices is None:
            wanted = None
        else:
            planes = np.asarray(slices, dtype=np.int64) if state.back is None else state.back[slices]
            wanted = np.unique(planes[~state.done[planes]])
            if not len(wanted):
                return
        prepared = (state.grid, state.crop)
        for planes, p_heart, p_coronary, p_other, _, crop in self._outputs(hu, pixel_spacing, slice_increment,
                                                                          wanted, prepared):
            r0, r1, c0, c1 = crop
            state.marks[planes, r0 // s : r1 // s, c0 // s : c1 // s] = self._mark_codes(p_heart, p_coronary, p_other)
            state.done[planes] = True

    def _grid_of(self, state: _MarkState) -> MarkGrid:
        marks = state.marks if state.back is None else state.marks[state.back]
        done = self._known(state)
        rows, cols = self._index_maps(state.grid)
        return MarkGrid(marks=marks, rows=rows, cols=cols, crop=state.crop,
                        run=None if done.all() else np.flatnonzero(done))

    def mark_grid(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None = None
    ) -> MarkGrid:
        """The model's marks for every slice, computed batch by batch (the probabilities are dropped)."""
        state = self._mark_state(hu, pixel_spacing, slice_increment)
        self._run_marks(hu, pixel_spacing, slice_increment, state, None)
        return self._grid_of(state)

    def region_marks(
        self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float | None,
        region: HeartRegion,
    ) -> tuple[MarkGrid, UnitCache]:
        """The model's marks on only the slices the score depends on, and the units found meanwhile.

        Why: most of a CTAC's slices lie off the heart (neck, abdomen) and the model is most of the
        time. The score depends on the marks of the lesions that can be scored (a candidate unit with a
        pixel in the heart region) and, since a lesion's marks are pooled across its slices, on every
        slice such a lesion continues into: :func:`connector.infer.agatston.lesion_reach` names them,
        the model runs on them, and again until no such lesion leaves the marked slices. Each plane's
        output is computed exactly as for the whole series (same neighbours, same 3d patches, same
        crop), so the choice, and the score, are the same as with marks everywhere; slices not run
        read NO_MARK."""
        state = self._mark_state(hu, pixel_spacing, slice_increment)
        rows, cols = self._index_maps(state.grid)
        outside = (rows < 0)[:, None] | (cols < 0)[None, :]
        rows, cols = np.clip(rows, 0, None), np.clip(cols, 0, None)

        def lookup(k: int, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:  # MarkGrid.lookup, on live marks
            plane = k if state.back is None else int(state.back[k])
            return np.where(outside[rr, cc], NO_MARK, state.marks[plane][rows[rr], cols[cc]])

        # lesion_reach asks only for slices already marked, whose marks do not change: one cache throughout
        units, reach, n = UnitCache(hu, lookup), 1, hu.shape[0]
        while needed := lesion_reach(units, known := self._known(state), region.slab, region.first):
            if known.any():  # a lesion grows slice by slice: after the first rounds, run ahead of it
                ahead = set(needed)
                for j in needed:  # marks are exact on any slice, so running more only costs time
                    step = 1 if j > 0 and known[j - 1] else -1
                    ahead.update(min(max(j + step * i, 0), n - 1) for i in range(1, reach))
                needed, reach = sorted(ahead), min(2 * reach, 32)
            self._run_marks(hu, pixel_spacing, slice_increment, state, np.asarray(needed))
        return self._grid_of(state), units

    @staticmethod
    def _known(state: _MarkState) -> np.ndarray:
        """Per series slice: its marks are computed."""
        return state.done if state.back is None else state.done[state.back]

    def coronary_mask(
        self, hu: np.ndarray, seg: Segmentation | MarkGrid, within: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Mask of the lesions the model chose, each whole (see ``select_coronary``), at full
        resolution; ``within`` (first, last): only those slices' (the lesions are still followed
        beyond them)."""
        marks = seg if isinstance(seg, MarkGrid) else MarkGrid(self.marks(seg), seg.rows, seg.cols, seg.crop)
        return self._coronary_mask(hu, marks, within)

    def _coronary_mask(
        self, hu: np.ndarray, marks: MarkGrid, within: tuple[int, int] | None, units: UnitCache | None = None
    ) -> np.ndarray:
        with_coronary = np.flatnonzero((marks.marks == CORONARY).any(axis=(1, 2)))
        return select_coronary(hu, marks.lookup(), slices=with_coronary.tolist(), within=within, units=units)

    def score_hu(self, hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float, *,
                 all_slices: bool = False) -> ScoredVolume:
        """Segment and score a HU volume (slices, rows, columns) already sorted along the normal.

        The model runs only on the slices the score depends on (:meth:`region_marks`); ``all_slices``
        runs it on every slice instead (tests: the score is the same).

        Memory: besides ``hu`` itself, a few hundred kB a slice at most (the heart search's 3 mm grid,
        the model's marks) plus the heart's slices at full resolution; the model runs batch by batch.
        """
        t0 = time.perf_counter()
        region = find_heart(hu, pixel_spacing, slice_increment)  # without the model: where scoring may happen
        if not region.found:
            return ScoredVolume(agatston=agatston(hu[:0], None, pixel_spacing, slice_increment),
                                slab=np.zeros((0, *hu.shape[1:]), dtype=bool), first=0, slices=hu.shape[0],
                                inference_s=0.0, scoring_s=time.perf_counter() - t0, crop=(0, 0, 0, 0),
                                heart_found=False)
        if all_slices:
            grid, units = self.mark_grid(hu, pixel_spacing, slice_increment), None
        else:  # the same score, the model on the slices it depends on only
            grid, units = self.region_marks(hu, pixel_spacing, slice_increment, region)
        t1 = time.perf_counter()
        within = (region.first, region.last)
        # a lesion off the heart is never scored
        slab = region.restrict_slab(self._coronary_mask(hu, grid, within, units))
        result = agatston(hu[region.first : region.last + 1], slab, pixel_spacing, slice_increment,
                          first_slice=region.first)
        t2 = time.perf_counter()
        return ScoredVolume(agatston=result, slab=slab, first=region.first, slices=hu.shape[0],
                            inference_s=t1 - t0, scoring_s=t2 - t1, crop=grid.crop,
                            model_slices=hu.shape[0] if grid.run is None else len(grid.run))

    def score_volume(self, volume: CtVolume, load_s: float = 0.0) -> SeriesResult:
        """Score a loaded series and wrap it as a :class:`SeriesResult`."""
        scored = self.score_hu(volume.hu, volume.pixel_spacing, volume.slice_increment_mm)
        if not scored.heart_found:  # a number here would read as "no calcium": say why there is none
            log.warning("cac series not scored: no heart found in the scan")
            return self.failed(volume.study_uid, volume.series_uid, "heart_not_found", load_s)
        weights = scored.agatston.weights
        assert weights is not None
        return SeriesResult(
            study_uid=volume.study_uid,
            series_uid=volume.series_uid,
            status="ok",
            model=self.manifest.summary(),
            provider=self.provider,
            timings=Timings(load_s=load_s, inference_s=scored.inference_s, scoring_s=scored.scoring_s),
            agatston=scored.agatston,
            slices=int(volume.hu.shape[0]),
            slice_thickness_mm=volume.slice_thickness_mm,
            pixel_spacing_mm=volume.pixel_spacing,
            warnings=volume.spacing.warnings,
            scored_calcium=scored_calcium_of(volume.hu, weights, volume.pixel_spacing, volume.slice_increment_mm,
                                             first_slice=scored.agatston.first_slice),
            source_paths=volume.source_paths,
        )

    def failed(self, study_uid: str, series_uid: str, code: str, load_s: float = 0.0) -> SeriesResult:
        """An error result for a series that could not be scored."""
        return SeriesResult(
            study_uid=study_uid,
            series_uid=series_uid,
            status="error",
            model=self.manifest.summary(),
            provider=self.provider,
            timings=Timings(load_s=load_s),
            error=code,
        )
