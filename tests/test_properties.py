"""Property-based tests (hypothesis) of the tokenizer, the request checks and the postprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bonescan import contract as C
from bonescan.postprocess import postprocess
from bonescan.tokenize import ReportError, ReportTokenizer, build_tokenizer, decode_report
from bonescan.validate import image_problem, spacing_problem

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return ReportTokenizer(d / "tokenizer.json")


@SETTINGS
@given(texts=st.lists(st.text(max_size=600), min_size=1, max_size=6))
def test_tokenizer_any_text(tokenizer, texts):
    ids, mask = tokenizer(texts)
    assert ids.shape == mask.shape == (len(texts), C.TOKENIZER.max_tokens)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all()
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert 2 <= n <= C.TOKENIZER.max_tokens
        assert (row_mask[:n] == 1).all() and (row_mask[n:] == 0).all()  # ones then padding
        assert (row_ids[n:] == C.TOKENIZER.pad_token_id).all()
    again, _ = tokenizer(texts)
    assert np.array_equal(ids, again)  # deterministic


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_report_bytes_decode_or_refuse_without_echo(raw):
    try:
        text = decode_report(raw)
    except ReportError as e:
        assert "UTF-8" in str(e)
        if len(raw) >= 4:
            assert repr(raw)[2:-1] not in str(e)
        return
    assert text == raw.decode("utf-8")


@SETTINGS
@given(n=st.integers(min_value=C.TOKENIZER.max_report_chars + 1, max_value=C.TOKENIZER.max_report_chars + 500))
def test_oversized_reports_are_refused(n):
    with pytest.raises(ReportError, match="limit"):
        decode_report("骨" * n)


finite = st.floats(min_value=0, max_value=C.MAX_COUNT, allow_nan=False, width=32)


@SETTINGS
@given(
    value=st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.floats(min_value=-1e6, max_value=-0.5, width=32),
                    st.just(float(C.MAX_COUNT + 1))),
    where=st.tuples(st.integers(0, 1), st.integers(0, C.IMAGE_HEIGHT - 1), st.integers(0, C.IMAGE_WIDTH - 1)),
)
def test_image_checks(value, where):
    img = np.ones(C.IMAGE_DIMS, np.float32)
    img[where] = value
    problem = image_problem(img)
    bad = not np.isfinite(value) or value < 0 or value > C.MAX_COUNT
    assert (problem is not None) == bad
    if problem:
        assert problem.startswith("IMAGE")
        if np.isfinite(value):  # the message names the problem, never the pixel value
            assert str(value) not in problem.replace(str(C.MAX_COUNT), "")


@SETTINGS
@given(delta=st.lists(st.sampled_from(("same", "same", "same", "less", "more", "half")), min_size=3, max_size=3),
       extra=st.sampled_from(((), (1,), "drop")), dtype=st.sampled_from((np.float32, np.float32, np.float64, np.uint16)))
def test_image_shape_and_dtype_checks(delta, extra, dtype):
    """Shapes near the contract's (each dim right or off by a little, a dim more or less) and a few
    dtypes: refused exactly when the shape or the dtype is not the contract's, and the message says which."""
    change = {"same": lambda d: d, "less": lambda d: d - 1, "more": lambda d: d + 1, "half": lambda d: max(d // 2, 1)}
    shape = tuple(change[e](d) for d, e in zip(C.IMAGE_DIMS, delta))
    shape = shape[1:] if extra == "drop" else shape + tuple(extra)
    problem = image_problem(np.ones(shape, dtype))
    ok = shape == C.IMAGE_DIMS and dtype == np.float32
    assert (problem is None) == ok, (shape, dtype, problem)
    if dtype != np.float32:
        assert "FP32" in problem
    elif not ok:
        assert str(list(C.IMAGE_DIMS)) in problem and str(list(shape)) in problem


def test_empty_view_is_refused():
    img = np.ones(C.IMAGE_DIMS, np.float32)
    assert image_problem(img) is None
    img[1] = 0
    assert image_problem(img) == "IMAGE posterior view is empty (all zero)"


@SETTINGS
@given(s=arrays(np.float32, 2, elements=st.floats(-100, 100, width=32) | st.just(float("nan"))))
def test_spacing_checks(s):
    ok = bool(np.isfinite(s).all() and (s >= 0.1).all() and (s <= 20).all())
    assert (spacing_problem(s) is None) == ok


@SETTINGS
@given(
    blobs=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 250), st.integers(1, 12), st.integers(1, 6)), max_size=6),
    noise=st.integers(0, 40),
    spacing=st.floats(0.5, 5.0),
)
def test_postprocess_invariants(blobs, noise, spacing):
    rng = np.random.default_rng(noise)
    logits = np.full((1, 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH), -6.0, np.float32)
    for y, x, h, w in blobs:
        logits[0, 0, y : y + h, x : x + w] = 4.0
    idx = rng.integers(0, logits.size, size=noise)
    logits.reshape(-1)[idx] = 3.0  # isolated specks
    masks, prob, lesions_json = postprocess(logits, np.array([[spacing, spacing]], np.float32))
    m = masks[0, 0]
    info = json.loads(lesions_json[0])
    assert masks.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert prob.dtype == np.float32 and float(prob.min()) >= 0 and float(prob.max()) <= 1
    assert ((m == 1) <= (prob[0, 0] >= C.THRESHOLD)).all()  # the mask only keeps above-threshold pixels
    assert info["count"] == len(info["lesions"])
    assert sum(les["area_px"] for les in info["lesions"]) == int(m.sum())
    for les in info["lesions"]:
        assert les["area_px"] >= C.MIN_LESION_PIXELS
        assert les["area_mm2"] == pytest.approx(les["area_px"] * spacing * spacing, rel=1e-3, abs=0.06)
        y0, x0, y1, x1 = les["bbox"]
        assert m[y0 : y1 + 1, x0 : x1 + 1].sum() >= les["area_px"]
        assert C.THRESHOLD <= les["mean_probability"] <= les["max_probability"] <= 1
    areas = [les["area_px"] for les in info["lesions"]]
    assert areas == sorted(areas, reverse=True)
