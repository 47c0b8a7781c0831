"""``make demo-pacs`` (``bonescan demo-pacs``): the demo's model behind a DICOM node and a real PACS.

After ``make demo``: a tritonserver on its model repository, a local Orthanc (Debian's, with DICOMweb)
and the DICOM node (``bonescan.client.dicom.node``), all on free loopback ports. One synthetic study
(NM scan + report SR, from a held-out case) is C-STOREd into Orthanc, Orthanc forwards it to the
node, and the node's SEG and SR land in the same study in Orthanc. Prints where to look; with
``--keep`` everything stays up until Ctrl-C so Orthanc's explorer can show the study.
Kept out of ``make demo`` so that its time budget holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bonescan.errors import BonescanError


def run_demo_pacs(out: str | Path, keep: bool = False) -> dict[str, Any]:
    """Serve ``out/model_repository``, send one study of ``out/data`` through Orthanc and the node."""
    from bonescan.benchmarks.pacs import PacsRig, study_files

    out = Path(out)
    repo, data = out / "model_repository", out / "data"
    if not repo.is_dir() or not (data / "manifest.json").is_file():
        raise BonescanError(f"{out}: no model_repository and data of `make demo` there; run `make demo` first "
                            "(or give the folder of a `bonescan demo --out`)")
    run = out / "pacs"
    (study, files), = study_files(data, run / "studies", 1, seed=4242)
    print(f"==> tritonserver on {repo}, Orthanc, the DICOM node; one synthetic study ({len(files)} instances)")
    with PacsRig(run, repo=repo) as rig:
        rig.store_in_pacs(files)
        forward_s, seg_s = rig.forward_and_wait(study)
        time.sleep(0.5)  # the SR follows the SEG on the same association
        found = {i["modality"]: i for i in rig.orthanc.instances(study) if i["modality"] in ("SEG", "SR")
                 and i["sop_instance_uid"] != _report_uid(files)}
        saved = _save(rig.orthanc, found, run / "results")
        sid = rig.orthanc.study_id(study)
        _print_where(rig, study, sid, forward_s, seg_s, found, saved, run)
        if keep:
            print("    everything stays up until Ctrl-C")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                print("    stopping")
    ok = "SEG" in found and "SR" in found
    print("the SEG and SR are in the study" if ok else "FAILED: the SEG or SR is missing from the study")
    return {"ok": ok, "study": study, "seg_s": seg_s, "saved": {k: str(v) for k, v in saved.items()}}


def _report_uid(files: list[Path]) -> str:
    import pydicom

    return next((str(ds.SOPInstanceUID) for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)
                 if ds.Modality == "SR"), "")


def _save(orthanc: Any, found: dict[str, dict], folder: Path) -> dict[str, Path]:
    """Copies of the SEG and SR as Orthanc holds them (to open in a viewer or dciodvfy)."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = {}
    for modality, inst in found.items():
        path = folder / f"{modality.lower()}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{inst['id']}/file"))
        saved[modality] = path
    return saved


def _print_where(rig: Any, study: str, sid: str | None, forward_s: float, seg_s: float, found: dict[str, dict],
                 saved: dict[str, Path], run: Path) -> None:
    o = rig.orthanc
    print(f"    study {study}: forwarded in {forward_s * 1000:.0f} ms; SEG in Orthanc {seg_s * 1000:.0f} ms later")
    print(f"    Orthanc: {o.url} (explorer: {o.url}/app/explorer.html#study?uuid={sid})")
    print(f"    DICOMweb: {o.dicomweb_url}/studies/{study}/series")
    for modality, inst in sorted(found.items()):
        print(f"    {modality}: SOPInstanceUID {inst['sop_instance_uid']}; copy in {saved.get(modality)}")
    print(f"    node spool: {run / 'spool'} (done/ holds the study's record); logs and Orthanc's storage in {run}")
