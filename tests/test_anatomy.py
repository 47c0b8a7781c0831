"""The skeleton's region classes, the label maps the generator writes, lesion naming and the Bone Scan Index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bonescan import anatomy as A
from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH
from bonescan.data.arrays import load_split
from bonescan.data.atlas import REGIONS as ATLAS_REGIONS
from bonescan.data.generate import generate_dataset
from bonescan.data.io import read_regions, write_regions
from bonescan.data.synth import meta_json, synth_case
from bonescan.errors import BonescanError

#: sha256 (first 16 hex) of views, mask, report and meta.json of synth_case(0, i), computed at commit acd14d9,
#: before the label maps existed: drawing them must not change a byte of what the generator wrote before
BEFORE_LABEL_MAPS = {0: "34245c230f04a884", 1: "7cb0aff1fe9e1387", 2: "ffc54c56c9f22e97", 5: "00c223b008a9994b"}


def _digest(case) -> str:
    h = hashlib.sha256()
    for a in (case.anterior, case.posterior, case.mask):
        h.update(a.tobytes())
    h.update(case.report.encode())
    h.update(meta_json(case.meta).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def cases():
    return {i: synth_case(0, i) for i in BEFORE_LABEL_MAPS}


def test_generator_output_unchanged_by_label_maps(cases):
    assert {i: _digest(c) for i, c in cases.items()} == BEFORE_LABEL_MAPS


def test_classes_cover_the_atlas_once():
    assert A.REGION_CLASSES[0] == A.BACKGROUND and A.N_REGION_CLASSES == 107
    assert len(set(A.REGION_CLASSES)) == A.N_REGION_CLASSES
    assert ATLAS_REGIONS is A.REGIONS  # one catalogue
    assert set(A.CLASS_REGION[1:]) == set(A.REGIONS)
    assert A.REGION_CLASSES[A.class_of("rib_R5", "posterior")] == "rib_R5_posterior"
    assert "rib_L11_anterior" not in A.CLASS_INDEX and "rib_L10_anterior" in A.CLASS_INDEX
    assert A.class_of("T7", "body") == A.class_of("T7", "posterior_elements") == A.CLASS_INDEX["T7"]
    for c in range(1, A.N_REGION_CLASSES):
        assert A.english_name(c) and A.chinese_name(c) and A.snomed_site(c)


def test_names():
    names = {c: (A.english_name(A.CLASS_INDEX[c]), A.chinese_name(A.CLASS_INDEX[c]))
             for c in ("T7", "rib_R5_posterior", "femur_L_proximal", "sacrum", "C2", "rib_L1_anterior")}
    assert names == {"T7": ("T7", "第7胸椎"), "rib_R5_posterior": ("right 5th rib, posterior", "右侧第5肋后段"),
                     "femur_L_proximal": ("left proximal femur", "左侧股骨近端"), "sacrum": ("sacrum", "骶骨"),
                     "C2": ("C2", "第2颈椎"), "rib_L1_anterior": ("left 1st rib, anterior", "左侧第1肋前段")}
    assert A.snomed_site(A.CLASS_INDEX["T7"]) == ("122495006", "Thoracic spine")
    assert A.snomed_laterality(A.CLASS_INDEX["T7"]) is None
    assert A.snomed_laterality(A.CLASS_INDEX["femur_L_proximal"]) == ("7771000", "Left")


def _at(regions: np.ndarray, view: int, yx: tuple[float, float]) -> str:
    return A.REGION_CLASSES[int(regions[view, int(round(yx[0])), int(round(yx[1]))])]


def test_label_maps_show_what_each_view_shows(cases):
    from bonescan.data.atlas import Patient, build_skeleton

    case = cases[0]
    r = case.regions
    assert r.dtype == np.uint8 and r.shape == (2, IMAGE_HEIGHT, IMAGE_WIDTH)
    # the same skeleton, rebuilt with the generator's first draws, gives the landmarks
    rng = np.random.default_rng(np.random.SeedSequence([0, 0]))
    pixel_mm = float(rng.uniform(1.9, 2.4))
    sk = build_skeleton(Patient.sample(rng, pixel_mm), rng)
    # over the spine the anterior view shows the sternum, the posterior view the vertebra
    y, x = sk.landmarks["T4"]
    assert _at(r, 0, (y, x)) == "sternum" and _at(r, 1, (y, x)) == "T4"
    assert _at(r, 0, sk.landmarks["L3"]) == _at(r, 1, sk.landmarks["L3"]) == "L3"
    # the patient's left is the image's right in both channels (the posterior view is mirrored)
    y, x = sk.landmarks["hip_L"]
    assert x > IMAGE_WIDTH / 2 and _at(r, 0, (y, x)).startswith("femur_L") and _at(r, 1, (y, x)).startswith("femur_L")
    assert set(np.unique(r[0])) != set(np.unique(r[1]))  # each view has its own
    assert 90 < len(np.unique(r)) <= A.N_REGION_CLASSES


def test_regions_files_round_trip_and_are_optional(tmp_path: Path):
    generate_dataset(tmp_path / "d", 3, seed=1, workers=1, progress=False)
    case = tmp_path / "d" / "cases" / "case_00001"
    r = read_regions(case / "regions.png")
    assert np.array_equal(r, synth_case(1, 1).regions)
    write_regions(tmp_path / "r.png", r)
    assert np.array_equal(read_regions(tmp_path / "r.png"), r)
    assert load_split(tmp_path / "d", None, progress=False).regions is None  # not asked for: not read
    arr = load_split(tmp_path / "d", None, progress=False, regions=True)
    assert arr.regions.shape == (3, 2, IMAGE_HEIGHT, IMAGE_WIDTH) and arr.require_regions() is arr.regions
    assert arr.select([2, 0]).regions.shape[0] == 2
    from bonescan.data.preview import region_preview

    png = region_preview(tmp_path / "d", "case_00001", tmp_path / "regions.png", scale=1.0)
    assert png.stat().st_size > 10_000
    for c in (tmp_path / "d" / "cases").iterdir():  # a folder written before label maps existed
        (c / "regions.png").unlink()
    (tmp_path / "d" / "manifest.json").touch()
    old = load_split(tmp_path / "d", None, progress=False, regions=True)
    assert old.regions is None and len(old.regions_missing) == 3
    with pytest.raises(BonescanError, match="3 of 3 cases have no regions.png"):
        old.require_regions()


# ----------------------------------------------------------------------------- naming, BSI (hand-made maps)
T7, RIB5P, STERNUM = A.CLASS_INDEX["T7"], A.CLASS_INDEX["rib_R5_posterior"], A.CLASS_INDEX["sternum"]


def _maps() -> np.ndarray:
    """A 40 x 40 two-view map: T7 (rows 0-9, cols 0-19: 200 px), the right 5th rib's posterior arc
    (rows 20-29, 200 px); the anterior view shows the sternum over the left half of T7."""
    r = np.zeros((2, 40, 40), np.uint8)
    r[:, 0:10, 0:20] = T7
    r[0, 0:10, 0:10] = STERNUM
    r[:, 20:30, 0:20] = RIB5P
    return r


def test_lesions_are_named_by_most_of_their_pixels():
    r = _maps()
    labels = np.zeros((40, 40), np.int32)
    labels[2:6, 12:18] = 1  # inside T7 in both views
    labels[22:26, 2:10] = 2  # on the rib, with ...
    labels[26:32, 2:4] = 2  # ... 4 of its 44 pixels off the bone
    labels[35:38, 35:38] = 3  # on no bone
    s1, s2, s3 = A.lesion_sites(labels, 3, r)
    assert (s1.name, s1.share, s1.english, s1.chinese, s1.side) == ("T7", 1.0, "T7", "第7胸椎", "")
    assert s2.name == "rib_R5_posterior" and s2.share == pytest.approx(40 / 44) and s2.side == "right"
    assert s3.cls == 0 and s3.share == 1.0 and s3.name == A.BACKGROUND
    # under the sternum: equal views tie (first class in the list wins); the view that sees the lesion decides
    labels = np.zeros((40, 40), np.int32)
    labels[2:6, 2:8] = 1
    assert A.lesion_sites(labels, 1, r)[0].share == pytest.approx(0.5)
    assert A.lesion_sites(labels, 1, r, np.array([[1.0, 3.0]]))[0].name == "T7"
    assert A.lesion_sites(labels, 1, r, np.array([[3.0, 1.0]]))[0].name == "sternum"
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        A.lesion_sites(labels, 1, r[0])


def test_the_reports_bone_names_a_lesion_the_image_leaves_between_two():
    """Under the sternum the anterior view says sternum, the posterior T7; the clearer view decides (here the
    anterior: sternum) unless the report names one of the two candidates, which then names it. A bone the
    report names that is no candidate of the lesion changes nothing, nor does a report naming the majority."""
    r = _maps()
    labels = np.zeros((40, 40), np.int32)
    labels[2:6, 2:8] = 1
    w = np.array([[3.0, 1.0]])
    named = np.zeros(A.N_REGION_CLASSES, bool)
    assert A.lesion_sites(labels, 1, r, w, named=named)[0].name == "sternum"
    named[T7] = True
    site = A.lesion_sites(labels, 1, r, w, named=named)[0]
    assert site.name == "T7" and site.candidates[0] == "T7" and site.share == pytest.approx(0.25)
    named[:] = False
    named[RIB5P] = True  # named, but no place of this lesion
    assert A.lesion_sites(labels, 1, r, w, named=named)[0].name == "sternum"
    named[STERNUM] = named[T7] = True
    assert A.lesion_sites(labels, 1, r, w, named=named)[0].name == "sternum"


def test_the_bone_the_report_wrote_names_a_lesion_that_only_touches_it():
    """A lesion lying mostly on the rib, a tenth of it on T7 (below the candidates' share, above NAMED_SHARE):
    T7 names it when the report wrote T7 and not the rib (report_named, exact); a report naming T6 flags T7
    as a neighbour in report_regions, which would name the lesion T7: the exact flags do not."""
    from bonescan.report_sites import named_classes

    r = _maps()
    labels = np.zeros((40, 40), np.int32)
    labels[20:29, 10:20] = 1  # 90 px on the rib
    labels[9:10, 10:20] = 1  # 10 px on T7
    assert A.NAMED_SHARE <= 0.1 < A.CANDIDATE_SHARE
    assert A.lesion_sites(labels, 1, r)[0].name == "rib_R5_posterior"
    report = "检查所见：T7及右侧第5肋见放射性浓聚。诊断意见：骨转移。"
    exact, wide = named_classes(report, exact=True), named_classes(report)
    assert exact[T7] and not exact[A.CLASS_INDEX["T8"]] and wide[A.CLASS_INDEX["T8"]]
    assert A.lesion_sites(labels, 1, r, named=wide)[0].name == "rib_R5_posterior"  # the rib is named (within one)
    only_t7 = named_classes("T7骨转移。", exact=True)
    assert A.lesion_sites(labels, 1, r, named=only_t7)[0].name == "T7"
    assert not named_classes("T6骨转移。", exact=True)[T7] and named_classes("T6骨转移。")[T7]
    # a report naming T6: its neighbour flags would name this lesion T7; the bones it wrote leave it on the rib
    assert A.lesion_sites(labels, 1, r, named=named_classes("T6骨转移。"))[0].name == "T7"
    assert A.lesion_sites(labels, 1, r, named=named_classes("T6骨转移。", exact=True))[0].name == "rib_R5_posterior"
    # a coarse group still covers its bones; a long bone without its segment, every segment
    assert named_classes("脊柱多发骨转移。", exact=True)[T7]
    femur = named_classes("左股骨骨转移。", exact=True)
    assert all(femur[A.CLASS_INDEX[f"femur_L_{seg}"]] for seg in ("proximal", "shaft", "distal"))


def test_bone_scan_index_by_hand():
    r = _maps()
    labels = np.zeros((40, 40), np.int32)
    labels[0:10, 10:20] = 1  # the half of T7 both views show as T7: 100 px
    labels[20:30, 0:10] = 2  # half of the rib: 100 px
    b = A.bone_burden(labels, 2, r)
    # anterior: spine 100 of 100 T7 px (the sternum hides the other half) -> 8.3; ribs 100/200 x 4.4 = 2.2
    # posterior: spine 100 of 200 -> 4.15; ribs 2.2. BSI = mean(10.5, 6.35)
    assert b.bsi_views == pytest.approx((10.5, 6.35)) and b.bsi == pytest.approx(8.425)
    assert b.eod == 1 and b.hot_spots == {"T7": 1, "rib_R5": 1}
    assert A.bone_burden(np.zeros((40, 40), np.int32), 0, r).bsi == 0.0
    full = np.ones((40, 40), np.int32)  # every axial pixel involved: a superscan, whatever the count
    assert A.bone_burden(full, 1, r).eod == 4 and A.bone_burden(full, 1, r).axial_share == 1.0


def test_the_bone_scan_index_counts_the_pixels_at_its_threshold():
    """postprocess counts a lesion's pixels at contract.BSI_THRESHOLD or more in the BSI; the lesion, its area and
    its name keep every pixel of the mask."""
    from bonescan.contract import BSI_THRESHOLD
    from bonescan.postprocess import lesions_of

    r = _maps()
    mask = np.zeros((40, 40), bool)
    mask[0:10, 10:20] = True  # the half of T7 both views show as T7
    prob = np.full((40, 40), BSI_THRESHOLD, np.float32)
    prob[5:10, 10:20] = BSI_THRESHOLD - 0.01  # half the lesion below the BSI's threshold
    full: dict = {}
    core: dict = {}
    lesions_of(mask, np.ones_like(prob), (1.0, 1.0), anatomy=full, regions=r)
    _, les = lesions_of(mask, prob, (1.0, 1.0), anatomy=core, regions=r)
    assert full["bsi"] > 0 and core["bsi"] == pytest.approx(full["bsi"] / 2)
    assert les[0]["area_px"] == 100 and les[0]["site"]["region"] == "T7" and core["eod"] == full["eod"] == 1


def test_the_bone_scan_index_leaves_out_lesions_the_report_calls_benign():
    """A lesion at a bone the report calls benign (an old rib fracture) and names as no metastasis is left out of
    the BSI (in_bsi False, counted in bsi_left_out), not out of the lesions, the grade or the hot spots; the same
    lesion counts when the report names the rib as a metastasis too, or without the report's flags."""
    from bonescan.postprocess import lesions_of
    from bonescan.report_sites import place_classes

    r = _maps()
    mask = np.zeros((40, 40), bool)
    mask[0:10, 10:20] = True  # T7
    mask[20:30, 0:10] = True  # rib_R5, posterior arc
    prob = np.ones((40, 40), np.float32)
    every: dict = {}
    lesions_of(mask, prob, (1.0, 1.0), anatomy=every, regions=r)
    fracture = place_classes("T7骨转移。右侧第5肋陈旧性骨折。")
    assert fracture.benign[RIB5P] and not fracture.wide[RIB5P]
    calm: dict = {}
    _, les = lesions_of(mask, prob, (1.0, 1.0), anatomy=calm, regions=r, benign=(fracture.wide, fracture.benign))
    t7_only = mask.copy()
    t7_only[20:] = False
    only: dict = {}
    lesions_of(t7_only, prob, (1.0, 1.0), anatomy=only, regions=r)
    assert calm["bsi"] == pytest.approx(only["bsi"]) and only["bsi"] < every["bsi"]
    assert calm["bsi_left_out"] == 1 and every["bsi_left_out"] == 0
    assert {x["site"]["region"]: x["in_bsi"] for x in les} == {"T7": True, "rib_R5_posterior": False}
    assert calm["eod"] == every["eod"] and calm["hot_spots"] == every["hot_spots"]
    named_too = place_classes("T7及右侧第5肋骨转移。右侧第5肋陈旧性骨折。")
    both: dict = {}
    lesions_of(mask, prob, (1.0, 1.0), anatomy=both, regions=r, benign=(named_too.wide, named_too.benign))
    assert both["bsi"] == pytest.approx(every["bsi"]) and both["bsi_left_out"] == 0


def test_bench_counts_left_out_lesions_on_true_ones():
    """bench anatomy's count of BSI-left-out lesions that lie on a true lesion moves when one does."""
    from bonescan.benchmarks.anatomy import Served, _left_out_on_truth
    from bonescan.postprocess import lesions_of
    from bonescan.report_sites import place_classes

    r = _maps()
    mask = np.zeros((40, 40), bool)
    mask[0:10, 10:20] = True  # T7
    mask[20:30, 0:10] = True  # rib_R5, called benign below
    fracture = place_classes("T7骨转移。右侧第5肋陈旧性骨折。")
    _, les = lesions_of(mask, np.ones((40, 40), np.float32), (1.0, 1.0), anatomy={}, regions=r,
                        benign=(fracture.wide, fracture.benign))
    served = Served(mask, mask.astype(np.float32), None, {}, les)
    truth = np.zeros((40, 40), bool)
    truth[2:5, 12:15] = True  # a true lesion under the counted T7 lesion only
    assert _left_out_on_truth(served, truth) == 0
    truth[25, 5] = True  # and one under the left-out rib lesion
    assert _left_out_on_truth(served, truth) == 1


def test_soloway_grades():
    assert [A.soloway_grade(n) for n in (0, 1, 5, 6, 20, 21)] == [0, 1, 1, 2, 2, 3]
    assert A.soloway_grade(3, 0.8) == 4 and A.soloway_grade(3, 0.5) == 1


def test_mass_table():
    assert sum(A.MASS_PERCENT.values()) == pytest.approx(100.1)
    assert A.mass_group("rib_L7") == "ribs" and A.mass_group("L3") == "spine_sacrum" and A.mass_group("pubis_R") == "pelvis"
    assert A.mass_group("femur_L_shaft") == "femur_L" and A.MASS_PERCENT["femur_L"] == 8.9


# ----------------------------------------------------------------------------- the anatomy output (model, postprocess, client)
def test_anatomy_network_learns_the_regions_and_leaves_the_lesion_logits_alone(dataset):
    """The anatomy network trained after the U-Net: the lesion logits are bit-identical before and after, its loss
    falls, and the deployed graph gives region_labels of the contract's shape, class ids in range."""
    import torch

    from bonescan import contract as C
    from bonescan.model.config import preset
    from bonescan.model.network import BoneScanNet
    from bonescan.train import train_anatomy

    torch.manual_seed(0)
    arr = load_split(dataset, "train", progress=False, regions=True)
    mcfg, tcfg = preset("tiny", "unet")
    tcfg.anatomy_steps, tcfg.anatomy_batch = 30, 2
    net = BoneScanNet(mcfg).eval()
    x = torch.from_numpy(arr.images[:2].astype(np.float32))
    with torch.no_grad():
        before = net.segmenter(x).clone()
    info = train_anatomy(net, arr, tcfg, seed=0, progress=False)
    with torch.no_grad():
        after = net.segmenter(x)
        logits, labels = net.deployed_segmenter()(x)
    assert torch.equal(before, after) and torch.equal(logits, after)
    assert labels.dtype == torch.int32 and tuple(labels.shape[1:]) == C.REGION_LABELS.dims
    assert 0 <= int(labels.min()) and int(labels.max()) < A.N_REGION_CLASSES
    # from chance (log 107 = 4.67) down: it learns something in 30 tiny steps
    assert info["final_loss"] < 0.8 * np.log(A.N_REGION_CLASSES)


def test_full_resolution_and_naming_through_postprocess(cases):
    """postprocess with the true label map on the anatomy output's grid: the lesion is named by its bone, in both
    languages, and the scan gets its BSI; without region_labels (or all background) neither appears."""
    import json

    from bonescan import contract as C
    from bonescan.postprocess import postprocess

    case = cases[0]
    s = C.REGION_STRIDE
    coarse = case.regions[:, s // 2 :: s, s // 2 :: s].astype(np.int32)
    full = A.full_resolution(coarse, s)
    assert full.shape == case.regions.shape and full.dtype == np.uint8
    assert np.mean(full == case.regions) > 0.9  # the coarse grid keeps most of the map
    # a square lesion in the middle of a vertebra the map names
    t7 = A.class_of("T7")
    ys, xs = np.nonzero(full[1] == t7)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    logits = np.full((1, 1, IMAGE_HEIGHT, IMAGE_WIDTH), -8.0, np.float32)
    logits[0, 0, cy - 2 : cy + 3, cx - 2 : cx + 3] = 8.0
    image = C.to_model_frame(case.anterior, case.posterior).astype(np.float32)[None]
    sp = np.array([[2.4, 2.4]], np.float32)
    _, _, out = postprocess(logits, sp, regions=coarse[None], images=image)
    doc = json.loads(out[0])
    site = doc["lesions"][0]["site"]
    assert site["region"] == "T7" and site["name_zh"] == A.chinese_name(t7) and site["share"] > 0.5
    assert doc["anatomy"]["bsi"] > 0 and doc["anatomy"]["eod"] == 1 and doc["anatomy"]["hot_spots"] == {"T7": 1}
    for regions in (None, np.zeros_like(coarse)[None]):
        doc = json.loads(postprocess(logits, sp, regions=regions)[2][0])
        assert "anatomy" not in doc and "site" not in doc["lesions"][0]


def test_naming_on_the_coarse_grid_equals_naming_at_full_resolution(cases):
    """postprocess names lesions on the anatomy output's grid (stride 4, no upsampled map): every site, share,
    candidate and the BSI are those of the same map repeated to full resolution; a grid that does not tile the
    lesion map is refused."""
    from bonescan import contract as C
    from bonescan.components import components

    s = C.REGION_STRIDE
    for case in list(cases.values())[:4]:
        coarse = case.regions[:, s // 2 :: s, s // 2 :: s]
        c = components(case.mask > 0)
        image = C.to_model_frame(case.anterior, case.posterior).astype(np.float64)
        full_sites, full_burden = A.name_lesions(c.labels, c.n, A.full_resolution(coarse, s), image)
        grid_sites, grid_burden = A.name_lesions(c.labels, c.n, coarse, image, stride=s)
        assert [x.to_dict() for x in grid_sites] == [x.to_dict() for x in full_sites]
        assert grid_burden.to_dict() == full_burden.to_dict()
    with pytest.raises(ValueError, match="stride 2"):
        A.lesion_sites(c.labels, c.n, coarse, stride=2)


def test_second_reader_in_the_client_marks_lesions_and_sites():
    from bonescan.client.core import second_reader

    def lesion(region: str) -> dict:
        return {"site": {"region": region, "candidates": [region]}}

    lesions = [lesion("T7"), lesion("rib_L5")]
    sites = second_reader(lesions, "第7胸椎见异常放射性浓聚，考虑骨转移。右侧第3肋骨转移。")
    assert [les["second_reader"] for les in lesions] == ["in_report", "not_in_report"]
    assert [(s["site"], s["flag"]) for s in sites] == [("T7", "found"), ("rib_R3", "not_found")]
    assert second_reader([lesion("T7")], "  ") is None


def test_within_one():
    from bonescan.benchmarks.anatomy import within_one

    assert within_one("T7", "T7") and within_one("T7", "T8") and within_one("C7", "T1") and within_one("rib_L5", "rib_L4")
    assert not within_one("T7", "T9") and not within_one("rib_L5", "rib_R5") and not within_one("femur_L_shaft", "femur_L_distal")


def test_the_anatomy_network_draws_from_its_own_random_stream():
    """Adding it changes neither the lesion path's initial weights nor the draws that follow (training batches)."""
    import torch

    from bonescan.model.config import preset
    from bonescan.model.network import BoneScanNet

    mcfg, _ = preset("tiny", "unet")
    runs = []
    for anatomy in (True, False):
        mcfg.anatomy = anatomy
        torch.manual_seed(3)
        net = BoneScanNet(mcfg)
        runs.append(({k: v for k, v in net.segmenter.state_dict().items() if not k.startswith("anatomy.")}, torch.rand(4)))
    (with_sd, with_next), (without_sd, without_next) = runs
    assert with_sd.keys() == without_sd.keys() and all(torch.equal(with_sd[k], without_sd[k]) for k in with_sd)
    assert torch.equal(with_next, without_next)


def test_the_named_place_prior_adds_weak_unet_hot_spots_in_the_bones_the_report_names(cases):
    """postprocess_failsafe with the report's bones (report_regions) and the anatomy output: a U-Net hot spot
    below the threshold in T7 joins the answer when the report names T7 and the prior is on; not when the
    report names another bone, not when the prior is off (then LESIONS has no named_place_pixels either)."""
    import json
    from dataclasses import replace

    from bonescan.failsafe import FailSafeSettings
    from bonescan.postprocess import postprocess_failsafe
    from bonescan.report_sites import named_classes

    grid, (cy, cx), dual, unet, text_map, stats, sp = _t7_scene(cases, -1.0)  # probability 0.27: below the answer's 0.5

    def answer(report: str, t: float):
        regions = np.stack([named_classes(report)]).astype(np.float32)
        masks, _, lesions, dec = postprocess_failsafe(dual, unet, text_map, stats, sp, replace(FailSafeSettings(), named_place_threshold=t),
                                                      regions=grid[None], report_regions=regions)
        return masks[0, 0], json.loads(lesions[0]), dec[0]

    mask, doc, dec = answer("检查所见：T7椎体见放射性浓聚。诊断意见：骨转移。", 0.2)
    assert dec["answered_by"] != "unet" and mask[cy, cx] == 1 and doc["named_place_pixels"] == 25
    assert doc["count"] == 1 and doc["lesions"][0]["site"]["region"] == "T7"
    mask, doc, _ = answer("检查所见：右侧股骨近端见放射性浓聚。诊断意见：骨转移。", 0.2)
    assert not mask.any() and doc["named_place_pixels"] == 0
    mask, doc, _ = answer("检查所见：T7椎体见放射性浓聚。诊断意见：骨转移。", 0.0)
    assert not mask.any() and "named_place_pixels" not in doc


def test_the_named_place_prior_is_chosen_by_its_margin_above_the_unets_froc_curve():
    """calibrate.pick_named_place: not the most sensitive threshold but the one lying furthest above the U-Net's
    FROC curve, if further than the answer without the prior, within the U-Net's false positives; else off."""
    from bonescan.calibrate import pick_named_place

    def row(t, sens, fp, margin):
        return {"t": t, "sensitivity": sens, "fp_per_scan": fp, "margin": margin}

    sweep = [row(0.0, 0.86, 1.40, 0.020), row(0.5, 0.87, 1.45, 0.028), row(0.2, 0.88, 1.70, 0.022), row(0.1, 0.89, 1.88, 0.015),
             row(0.05, 0.90, 2.20, 0.030)]
    assert pick_named_place(sweep, unet_fp=1.93) == 0.5  # 0.1 is the most sensitive within the budget; 0.05 is over it
    assert pick_named_place(sweep, unet_fp=2.5) == 0.05
    assert pick_named_place([row(0.0, 0.86, 1.40, 0.030), *sweep[1:4]], unet_fp=1.93) == 0.0  # none beats off
    assert pick_named_place([sweep[0], row(0.5, 0.87, 1.45, 0.028), row(0.4, 0.87, 1.45, 0.028)], 1.93) == 0.5  # tie: fewer additions


def test_image_only_evidence_lists_confident_unet_lesions_the_answer_dropped(cases):
    """With image_only_confidence on, LESIONS lists the U-Net's confident lesion that the report-guided answer does
    not hold, named by its bone, and the client's second reader flags it against the report; off (the default),
    no list."""
    import json
    from dataclasses import replace

    from bonescan.client.core import second_reader
    from bonescan.failsafe import FailSafeSettings
    from bonescan.postprocess import postprocess_failsafe

    grid, _, dual, unet, text_map, stats, sp = _t7_scene(cases, 3.0)  # probability 0.95: confident, and the answer drops it

    def doc(confidence: float) -> tuple[np.ndarray, dict]:
        masks, _, lesions, dec = postprocess_failsafe(dual, unet, text_map, stats, sp,
                                                      replace(FailSafeSettings(), image_only_confidence=confidence), regions=grid[None])
        assert dec[0]["answered_by"] != "unet"
        return masks[0, 0], json.loads(lesions[0])

    mask, d = doc(0.9)
    assert not mask.any() and d["count"] == 0  # not in the answer ...
    assert [les["site"]["region"] for les in d["image_only"]] == ["T7"] and d["image_only"][0]["area_px"] == 25  # ... but listed
    assert doc(0.99)[1]["image_only"] == [] and "image_only" not in doc(FailSafeSettings().image_only_confidence)[1]
    sites = second_reader(d["lesions"], "检查所见：右侧股骨近端见放射性浓聚。诊断意见：骨转移。", d["image_only"])
    assert d["image_only"][0]["second_reader"] == "not_in_report" and [s_["flag"] for s_ in sites] == ["not_found"]
    sites = second_reader(d["lesions"], "检查所见：T7椎体见放射性浓聚。诊断意见：骨转移。", d["image_only"])
    assert d["image_only"][0]["second_reader"] == "in_report" and [s_["flag"] for s_ in sites] == ["found"]


def _t7_scene(cases, unet_logit: float):
    """A case's true regions on the anatomy grid, and graph outputs with nothing but a 5 x 5 U-Net hot spot of
    ``unet_logit`` at the middle of T7 (posterior view): (grid, (cy, cx), dual, unet, text_map, stats, spacing)."""
    from bonescan import contract as C

    case = list(cases.values())[0]
    s = C.REGION_STRIDE
    grid = case.regions[:, s // 2 :: s, s // 2 :: s].astype(np.int32)
    ys, xs = np.nonzero(A.full_resolution(grid, s)[1] == A.class_of("T7"))
    cy, cx = int(np.median(ys)), int(np.median(xs))
    dual = np.full((1, 1, IMAGE_HEIGHT, IMAGE_WIDTH), -8.0, np.float32)
    unet = dual.copy()
    unet[0, 0, cy - 2 : cy + 3, cx - 2 : cx + 3] = unet_logit
    text_map = np.zeros((1, 2, IMAGE_HEIGHT // 32, IMAGE_WIDTH // 32), np.float32)
    return grid, (cy, cx), dual, unet, text_map, np.array([[40, 0, 3]], np.int32), np.array([[2.4, 2.4]], np.float32)


def test_parity_counts_served_disagreements():
    """bench parity's same_path / same_lesion_names / same_bsi each move when Triton's answer differs from PyTorch's
    served one in that respect only."""
    from types import SimpleNamespace

    from bonescan.benchmarks.parity import served_agreement

    answer = {"lesions": [{"site": {"region": "T7"}}, {"site": {"region": "rib_R5"}}],
              "anatomy": {"bsi": 0.42, "bsi_left_out": 1}}

    def result(**change):
        r = {"answered_by": "dualpath", "lesions": [{"site": {"region": "T7"}}, {"site": {"region": "rib_R5"}}],
             "anatomy": {"bsi": 0.4204, "bsi_left_out": 1}}
        r.update(change)
        return SimpleNamespace(**r)

    decision = {"answered_by": "dualpath"}
    assert served_agreement(answer, decision, result()) == {"same_path": True, "same_lesion_names": True, "same_bsi": True}
    assert not served_agreement(answer, decision, result(answered_by="unet"))["same_path"]
    assert not served_agreement(answer, decision, result(lesions=[{"site": {"region": "T8"}},
                                                                   {"site": {"region": "rib_R5"}}]))["same_lesion_names"]
    assert not served_agreement(answer, decision, result(anatomy={"bsi": 0.43, "bsi_left_out": 1}))["same_bsi"]
    assert not served_agreement(answer, decision, result(anatomy={"bsi": 0.42, "bsi_left_out": 0}))["same_bsi"]
    assert not served_agreement(answer, decision, result(anatomy=None))["same_bsi"]


def test_unfound_site_evidence_chooses_out_of_sample():
    """bench second-reader's evidence check: a probability that separates invented sites from missed lesions gives
    not_found precision 1 on the second half; one that does not, no better than the flag as it is."""
    from bonescan.benchmarks.anatomy import _site_evidence

    rows = [(i, i % 3 != 0, 0.01 if i % 3 else 0.4) for i in range(60)]  # invented low, missed lesions high
    e = _site_evidence(rows, 30)
    assert e["second_half_as_flagged"]["precision"] < 0.7
    assert e["second_half_chosen"]["precision"] == 1.0 and e["second_half_chosen"]["recall_of_unfound"] == 1.0
    mixed = [(i, i % 3 != 0, 0.01 * (i % 7)) for i in range(60)]  # no relation
    m = _site_evidence(mixed, 30)
    assert m["second_half_chosen"]["precision"] <= m["second_half_as_flagged"]["precision"] + 0.1


def test_rule_6_is_chosen_with_the_named_place_prior():
    """calibrate.pick_place_rule: the prior's threshold is chosen with rule 6 as calibrated; rule 6 is then left off
    where, at that threshold, the answer without it is as sensitive at fewer false positives, and kept where it
    finds a lesion more, whatever the margin says."""
    from bonescan.calibrate import _named_place_line, pick_place_rule

    def row(a, t, sens, fp, margin):
        return {"t": t, "add_named_lesions": a, "sensitivity": sens, "fp_per_scan": fp, "margin": margin}

    sweep = [row(True, 0.0, 0.86, 1.40, 0.020), row(True, 0.2, 0.88, 1.50, 0.025), row(True, 0.1, 0.89, 2.10, 0.030),
             row(False, 0.0, 0.83, 0.50, 0.150), row(False, 0.2, 0.88, 1.15, 0.045), row(False, 0.1, 0.89, 1.70, 0.030)]
    best = pick_place_rule(sweep, unet_fp=1.93)  # 0.1 is over the U-Net's FP; at 0.2 rule 6 finds nothing more
    assert (best["t"], best["add_named_lesions"]) == (0.2, False)
    line = _named_place_line({"chosen": 0.2, "add_named_lesions": False, "unet_fp_per_scan": 1.93, "sweep": sweep})
    assert "rule 6 left off" in line and "1.40 -> 1.15" in line
    sweep[4] = row(False, 0.2, 0.87, 1.15, 0.045)  # without rule 6 a lesion fewer: rule 6 stays, margin or not
    best = pick_place_rule(sweep, unet_fp=1.93)
    assert (best["t"], best["add_named_lesions"]) == (0.2, True)
    assert pick_place_rule([row(True, 0.0, 0.86, 1.40, 0.030), *sweep[1:]], 1.93)["t"] == 0.0  # nothing beats the first row
    sweep[4] = {**row(False, 0.2, 0.88, 1.15, 0.045), "shuffled_margin": -0.030}  # as sensitive, but another study's
    sweep[1] = {**row(True, 0.2, 0.88, 1.50, 0.025), "shuffled_margin": -0.015}   # report falls further: rule 6 stays
    assert pick_place_rule(sweep, 1.93)["add_named_lesions"] is True
    sweep[4]["shuffled_margin"] = -0.015
    assert pick_place_rule(sweep, 1.93)["add_named_lesions"] is False
