"""Text lines in an 8-bit image, read with the PP-OCR models that the rapidocr-onnxruntime wheel ships.

The detector (DB, PP-OCRv4) finds text boxes; the recogniser (CRNN/CTC, PP-OCRv4) reads each box.
The models, their pre- and post-processing come from the package; the ONNX Runtime sessions are
our own. rapidocr's wrapper takes every core: on the site's two-core box that leaves none to the
receiver and, with other work running, was slower than one thread. One thread, and the memory
arena shrunk back after every run: a kept arena saves ~30 ms an image but holds on to ~90 MB
after a 512 x 512 image and ~250 MB after a 1024 x 1024 one, for the worker's whole life. About
0.1 s for a 512 x 512 image; the models add about 90 MB.

Loaded once per process on first use (:func:`text_reader`) and shared; ``InferenceSession.run``
is thread-safe and the rest keeps no state between calls. The text read is for the caller's
decision only: it must never be logged or written anywhere.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DETECT_MAX_SIDE = 1024  # larger images are scaled down to this for detection (text stays >= ~8 px)
DETECT_MIN_SIDE = 512  # smaller images (PET 128 x 128, NM 64 x 64) are scaled up: the detector needs ~8 px text
_REC_HEIGHT, _REC_MIN_WIDTH = 48, 320  # the recogniser's input: 48 px high, at least 320 wide


@dataclass(frozen=True)
class TextLine:
    """One detected line: its box (x0, y0, x1, y1) in the image's pixels, the detector's mean
    probability inside the box, the recognised text and the recogniser's mean character probability."""

    box: tuple[int, int, int, int]
    box_score: float
    text: str = field(repr=False)  # never print it
    text_score: float


class TextReader:
    """The detector and recogniser, loaded from the rapidocr-onnxruntime package."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml, update_model_path

        config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3

        def session(path: str) -> Any:
            return ort.InferenceSession(path, sess_options=options, providers=[
                ("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})])

        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

        det = config["Det"]
        self._det = session(det["model_path"])
        self._det_input = self._det.get_inputs()[0].name
        self._det_pre = DetPreProcess(DETECT_MAX_SIDE, "max", det["mean"], det["std"])
        # The package's thresholds: pixel probability 0.3, box mean 0.5, boxes grown by 1.6 (DB paper).
        self._det_post = DBPostProcess(thresh=det["thresh"], box_thresh=det["box_thresh"],
                                       max_candidates=det["max_candidates"], unclip_ratio=det["unclip_ratio"],
                                       score_mode=det["score_mode"], use_dilation=det["use_dilation"])
        self._rec = session(config["Rec"]["model_path"])
        self._rec_input = self._rec.get_inputs()[0].name
        characters = self._rec.get_modelmeta().custom_metadata_map["character"].splitlines()
        self._decode = CTCLabelDecode(character=characters)

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Every text line found in ``image`` (H x W x 3 uint8)."""
        import cv2

        h, w = image.shape[:2]
        scale = 1.0
        if max(h, w) < DETECT_MIN_SIDE:
            scale = DETECT_MIN_SIDE / max(h, w)
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        batch = self._det_pre(image)
        if batch is None:
            return []
        probability = self._det.run(None, {self._det_input: batch}, self._run_options)[0]
        boxes, scores = self._det_post(probability, image.shape[:2])
        lines: list[TextLine] = []
        for quad, score in zip(boxes, scores):
            quad = np.asarray(quad, dtype=np.float32)
            crop = _crop(image, quad)
            if crop is None:
                continue
            text, text_score = self._recognise(crop)
            x0, y0 = quad.min(axis=0) / scale
            x1, y1 = quad.max(axis=0) / scale
            lines.append(TextLine((int(x0), int(y0), math.ceil(x1), math.ceil(y1)), float(score), text,
                                  float(text_score)))
        return lines

    def _recognise(self, crop: np.ndarray) -> tuple[str, float]:
        import cv2

        h, w = crop.shape[:2]
        width = max(_REC_MIN_WIDTH, math.ceil(_REC_HEIGHT * w / h))
        resized = cv2.resize(crop, (min(width, math.ceil(_REC_HEIGHT * w / h)), _REC_HEIGHT))
        x = np.zeros((1, 3, _REC_HEIGHT, width), dtype=np.float32)
        x[0, :, :, :resized.shape[1]] = (resized.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
        out = self._rec.run(None, {self._rec_input: x}, self._run_options)[0]
        text, score = self._decode(out)[0][:2]
        return str(text), float(score)


def _crop(image: np.ndarray, quad: np.ndarray) -> np.ndarray | None:
    """The box straightened to a horizontal strip (tall strips turned, as PP-OCR does)."""
    import cv2

    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    if width < 2 or height < 2:
        return None
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    crop = cv2.warpPerspective(image, cv2.getPerspectiveTransform(quad, target), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if height >= 1.5 * width:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


_reader: TextReader | None = None
_lock = threading.Lock()


def text_reader() -> TextReader:
    """The process's reader, loaded on first use (about 0.2 s and 90 MB) and kept."""
    global _reader
    if _reader is None:
        with _lock:
            if _reader is None:
                _reader = TextReader()
    return _reader
