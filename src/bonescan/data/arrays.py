"""A split held in memory, and the hash that names the data it came from.

Training, evaluation and the text-gain benchmark all read whole splits into arrays; they share
this module so that none of them has to import another (``train`` evaluates on the validation
split, so ``evaluate`` cannot also import ``train``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from bonescan.data.dataset import MANIFEST, BoneScanDataset, Sample, findings_mask
from bonescan.errors import BonescanError


class SplitArrays:
    """A split held in memory: counts (uint16 when they fit), masks, the findings masks that train
    the report's mention map (data.dataset.findings_mask), reports, ground truth (meta.json) when
    the cases carry it, and the skeleton's region label maps when every case has one (``regions``)."""

    def __init__(self, ds: BoneScanDataset, progress: bool = True, desc: str = "loading"):
        samples = ds.load_all(progress=progress, desc=desc)
        if not samples:
            split = f"split {ds.split!r}" if ds.split else "the data folder"
            if not len(ds):
                raise BonescanError(f"{ds.root}: no case in {split} (`bonescan data manifest --data {ds.root} --force` "
                                    "re-splits; its --val / --test set the shares)")
            check = f"`bonescan data check --data {ds.root}" + (f" --split {ds.split}`" if ds.split else "`")
            raise BonescanError(f"{ds.root}: no readable case in {split}: all {len(ds)} unreadable ({check} says why)")
        self._fill(samples, list(ds.errors), ds.with_regions)

    @classmethod
    def from_samples(cls, samples: list[Sample], errors: list | None = None) -> SplitArrays:
        """Arrays of samples already in memory (e.g. cases the generator made without writing them)."""
        if not samples:
            raise BonescanError("no case to hold in memory")
        arr = object.__new__(cls)
        arr._fill(samples, list(errors or []), any(s.regions is not None for s in samples))
        return arr

    def _fill(self, samples: list[Sample], errors: list, with_regions: bool = False) -> None:
        imgs = np.stack([s.image for s in samples])
        integral = bool(np.all(imgs == np.round(imgs))) and float(imgs.max()) <= 65535
        self.images = imgs.astype(np.uint16) if integral else imgs.astype(np.float32)
        self.masks = np.stack([s.mask if s.mask is not None else np.zeros(s.image.shape[1:], np.uint8) for s in samples])
        self.findings = np.stack([findings_mask(s.mask, s.meta, s.image.shape[1:]) for s in samples])
        self.metas = [s.meta for s in samples]
        self.reports = [s.report for s in samples]
        self.ids = [s.case_id for s in samples]
        self.spacings = [s.pixel_spacing for s in samples]
        self.errors = errors
        maps = [s.regions for s in samples if s.regions is not None]
        have = [s.regions is not None for s in samples]
        #: uint8 [N, 2, H, W] region label maps (bonescan.anatomy) when every case has one, else None
        self.regions: np.ndarray | None = np.stack(maps) if len(maps) == len(samples) else None
        #: ids of the cases without regions.png (all of them for hospital data or a folder written before them)
        self.regions_missing = [s.case_id for s, h in zip(samples, have, strict=True) if not h] if with_regions else []
        self.regions_read = with_regions  # load_split(..., regions=True) asked for them

    def require_regions(self) -> np.ndarray:
        """The region label maps, or an error saying how many cases lack them (what needs anatomy cannot run)."""
        if not self.regions_read:
            raise BonescanError("the region label maps were not read: load the split with load_split(..., regions=True)")
        if self.regions is None:
            raise BonescanError(f"{len(self.regions_missing)} of {len(self)} cases have no regions.png (skeleton region "
                                "label maps: synthetic data written by `bonescan data synth` since issue 26 has them; "
                                "hospital data has none)")
        return self.regions

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int) -> SplitArrays:
        """The first n cases (a view, no copy)."""
        return self.select(list(range(min(n, len(self)))))

    def select(self, indices: list[int]) -> SplitArrays:
        """The cases at ``indices``, in that order."""
        sub = object.__new__(SplitArrays)
        ix = np.asarray(indices, dtype=np.int64)
        sub.images, sub.masks, sub.findings = self.images[ix], self.masks[ix], self.findings[ix]
        sub.reports = [self.reports[i] for i in ix]
        sub.ids = [self.ids[i] for i in ix]
        sub.spacings = [self.spacings[i] for i in ix]
        sub.metas = [self.metas[i] for i in ix]
        sub.regions = None if self.regions is None else self.regions[ix]
        sub.regions_missing = [i for i in self.regions_missing if i in set(sub.ids)]
        sub.regions_read = self.regions_read
        sub.errors = []
        return sub


def load_split(data: str | Path, split: str | None, progress: bool = True, desc: str | None = None,
               n: int | None = None, regions: bool = False) -> SplitArrays:
    """Every readable case of one split of a data folder, in memory (cases without a mask are errors).

    Args:
        data: the data folder (``cases/`` and ``manifest.json``).
        split: ``train``, ``val`` or ``test``; None: every case.
        progress: show a progress bar while the cases load.
        desc: the progress bar's label (default ``loading <split>``).
        n: only the split's first n cases (None: all).
        regions: also read the region label maps (``.regions``; None when a case has none).

    Returns:
        The split's arrays; unreadable cases are skipped and listed in ``.errors``.
    """
    key = _cache_key(data, split, n, regions)
    if key is not None and key in _LOADED:
        return _LOADED[key]
    ds = BoneScanDataset(data, split, with_regions=regions)
    if n is not None:
        ds.refs = ds.refs[:n]
    arrays = SplitArrays(ds, progress, desc or f"loading {split or 'all cases'}")
    if key is not None:
        _LOADED[key] = arrays
        while len(_LOADED) > _CACHED_SPLITS:
            _LOADED.pop(next(iter(_LOADED)))
    return arrays


#: the splits loaded last (a process that trains several models on one data folder, as ``make demo``
#: does, reads each split once); keyed by the manifest's path, size and modification time
_LOADED: dict[tuple, SplitArrays] = {}
_CACHED_SPLITS = 2


def _cache_key(data: str | Path, split: str | None, n: int | None, regions: bool = False) -> tuple | None:
    m = Path(data) / MANIFEST
    try:
        st = m.stat()
    except OSError:
        return None  # no manifest: nothing says the folder did not change
    return (str(m.resolve()), st.st_size, st.st_mtime_ns, split, n, regions)


def manifest_hash(data: str | Path) -> str:
    """The first 16 hex digits of manifest.json's SHA-256: which data a checkpoint or a result saw."""
    p = Path(data) / MANIFEST
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "no-manifest"
