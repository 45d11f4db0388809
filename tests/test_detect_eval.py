"""Prophesee evaluation: `fastvid.events.detect.evaluate` against an independent re-implementation of the
toolbox's documented rules written here (per-box loops, pycocotools called directly), hand-valued
cases (perfect, time tolerance, filters) and `fastvid eval-events` on saved files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastvid.cli import main as cli_main
from fastvid.events.detect.boxsets import load_box_sets, save_box_sets
from fastvid.events.detect.evaluate import BOX_DTYPE, EvalConfig, eval_config, evaluate_detections

# The toolbox's own box layout (ts and class_confidence), as Prophesee's _bbox.npy files store it.
TOOLBOX_DTYPE = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"),
                          ("class_id", "<u1"), ("class_confidence", "<f4"), ("track_id", "<u4")])


def make_boxes(ts, xywh, cls, conf=1.0):
    b = np.zeros(len(ts), BOX_DTYPE)
    b["t"] = ts
    b["x"], b["y"], b["w"], b["h"] = np.asarray(xywh, np.float64).T
    b["class_id"] = cls
    b["class_confidence"] = conf
    return b


def random_set(seed, n_rec=3):
    """Labels on a 50 ms grid (some early, some small) and noisy detections with jittered times."""
    rng = np.random.default_rng(seed)
    labels, dets = {}, {}
    for r in range(n_rec):
        times = np.repeat(np.arange(200_000, 3_000_000, 50_000), rng.integers(0, 4, 56))
        n = len(times)
        xywh = np.stack([rng.uniform(0, 250, n), rng.uniform(0, 180, n), rng.uniform(4, 70, n), rng.uniform(4, 70, n)], 1)
        labels[f"rec{r}"] = make_boxes(times, xywh, rng.integers(0, 2, n))
        k = rng.integers(0, 3, n)  # 0-2 detections per label, some far off in time or space
        src = np.repeat(np.arange(n), k)
        d = make_boxes(times[src] + rng.integers(-70_000, 70_000, len(src)), xywh[src] + rng.normal(0, 2, (len(src), 4)),
                       labels[f"rec{r}"]["class_id"][src], rng.uniform(0.05, 1.0, len(src)))
        d["class_id"][rng.uniform(size=len(d)) < 0.1] ^= 1
        dets[f"rec{r}"] = d[np.argsort(d["t"], kind="stable")]
    return labels, dets


# ---- the independent reference: the toolbox's rules, one box at a time -------------------------

def ref_keep(b, skip_us, diag, side):
    """The toolbox's filter_boxes on its float32 fields: w**2 + h**2 >= diag**2 and w, h >= side, all in
    float32 (numpy float32 scalars stay float32; the Python thresholds are rounded to float32)."""
    w, h = np.float32(b["w"]), np.float32(b["h"])
    return (int(b["t"]) > skip_us and np.float32(w * w + h * h) >= np.float32(diag ** 2)
            and w >= np.float32(side) and h >= np.float32(side))


def ref_order(names):
    """The toolbox's image order: its evaluate script globs `<folder>/*.npy` and sorts the paths."""
    return [path[:-len("_bbox.npy")] for path in sorted(f"{name}_bbox.npy" for name in names)]


def ref_stats(labels, dets, skip_us=500_000, diag=30, side=10, tol=50_000, classes=("car", "pedestrian"), order=ref_order):
    """(12 COCO stats, images, labels, distinct detections near a label time) by the toolbox's rules."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, res, near = [], [], [], 0
    for name in order(labels):
        gt = [b for b in labels[name] if ref_keep(b, skip_us, diag, side)]
        dt = [b for b in dets.get(name, []) if ref_keep(b, skip_us, diag, side)]
        label_times = sorted({int(b["t"]) for b in gt})
        near += sum(any(abs(int(b["t"]) - ts) <= tol for ts in label_times) for b in dt)
        for ts in label_times:
            img = len(images) + 1
            images.append({"id": img, "width": 304, "height": 240})
            # the toolbox's _to_coco_format: area = w * h of the float32 fields; bbox values float32 scalars
            for b in gt:
                if int(b["t"]) == ts:
                    anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(b["class_id"]) + 1, "iscrowd": 0,
                                 "bbox": [np.float32(b[k]) for k in "xywh"],
                                 "area": float(np.float32(b["w"]) * np.float32(b["h"]))})
            for b in dt:
                if ts - tol <= int(b["t"]) <= ts + tol:
                    res.append({"image_id": img, "category_id": int(b["class_id"]) + 1, "score": float(b["class_confidence"]),
                                "bbox": [np.float32(b[k]) for k in "xywh"]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.params.imgIds = [i["id"] for i in images]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats), len(images), len(anns), near


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_matches_independent_reimplementation(backend):
    pytest.importorskip(backend)
    labels, dets = random_set(seed=3)
    stats, n_img, n_ann, n_res = ref_stats(labels, dets)
    m = evaluate_detections(labels, dets, EvalConfig(backend=backend))
    assert (m.num_images, m.num_labels, m.num_detections) == (n_img, n_ann, n_res)
    assert n_ann > 100 and 0.05 < stats[0] < 0.95  # a non-trivial case
    assert n_res < ref_pairs(labels, dets)  # detections near two label times: counted once, not per pair
    np.testing.assert_allclose(m.stats, stats, atol=1e-9)
    assert (m.mAP, m.AP50, m.AP75) == (m.stats[0], m.stats[1], m.stats[2])
    # gen4 thresholds and a tighter time tolerance change the result the same way in both
    stats4 = ref_stats(labels, dets, diag=60, side=20, tol=20_000)[0]
    m4 = evaluate_detections(labels, dets, eval_config("gen4", time_tol_us=20_000, sensor_size=(304, 240), backend=backend))
    np.testing.assert_allclose(m4.stats, stats4, atol=1e-9)
    assert m4.mAP != m.mAP


def ref_pairs(labels, dets, skip_us=500_000, diag=30, side=10, tol=50_000):
    """(label time, detection) pairs: what COCO receives as results, more than there are detections."""
    pairs = 0
    for name in labels:
        times = {int(b["t"]) for b in labels[name] if ref_keep(b, skip_us, diag, side)}
        pairs += sum(abs(int(b["t"]) - ts) <= tol for b in dets.get(name, []) if ref_keep(b, skip_us, diag, side)
                     for ts in times)
    return pairs


def test_num_detections_counts_each_detection_once():
    # label times 40 ms apart: the detection at 620 ms is scored at both (two COCO results), but it is one
    # detection; the one at 800 ms is near no label time and is not counted.
    labels = {"a": make_boxes([600_000, 640_000], [[10, 10, 40, 30], [100, 50, 20, 40]], [0, 1])}
    dets = {"a": make_boxes([620_000, 800_000], [[10, 10, 40, 30], [100, 50, 20, 40]], [0, 1], 0.9)}
    assert ref_pairs(labels, dets) == 2 and ref_stats(labels, dets)[3] == 1
    m = evaluate_detections(labels, dets, EvalConfig(backend="pycocotools"))
    assert (m.num_images, m.num_labels, m.num_detections) == (2, 2, 1)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_image_order_is_sorted_label_paths(backend):
    # "rec0_bbox.npy" sorts before "rec_bbox.npy" ("0" < "_"), the reverse of the names. A true and a false
    # positive of equal score in the two recordings: COCO ranks tied scores by image order, so the
    # precision at the first recall step (and AP) depends on which recording comes first.
    pytest.importorskip(backend)
    box = [[50, 50, 40, 40]]
    labels = {"rec": make_boxes([600_000], box, [0]), "rec0": make_boxes([600_000], box, [0])}
    dets = {"rec": make_boxes([600_000], box, [0], 0.5),                      # hit
            "rec0": make_boxes([600_000], [[200, 150, 40, 40]], [0], 0.5)}   # miss, same score
    assert ref_order(labels) == ["rec0", "rec"]
    stats = ref_stats(labels, dets)[0]
    by_name = ref_stats(labels, dets, order=sorted)[0]
    assert stats[0] < by_name[0]  # the data tells the two orders apart
    m = evaluate_detections(labels, dets, EvalConfig(backend=backend))
    np.testing.assert_allclose(m.stats, stats, atol=1e-9)


def test_filters_compute_in_float32():
    # Boxes whose w**2 + h**2 rounds to exactly 900 (= 30**2) in float32 but is just under it in float64,
    # and a side equal to float32(10.2) < 10.2: the toolbox keeps them all.
    edge = [[27.271780014038086, 12.5], [22.360679626464844, 20.0], [21.176342010498047, 21.25]]
    for w, h in edge:
        assert w * w + h * h < 900 and np.float32(w) ** 2 + np.float32(h) ** 2 == np.float32(900)
    thin = float(np.float32(10.2))
    assert thin < 10.2
    xywh = [[0, 0, 50, 50]] + [[0, 0, w, h] for w, h in edge] + [[0, 0, thin, 40]]
    labels = {"a": make_boxes([600_000] * len(xywh), xywh, [0] * len(xywh))}
    dets = {"a": labels["a"].copy()}
    for side in (10, 10.2):
        n_labels = ref_stats(labels, dets, side=side)[2]
        assert n_labels == 5
        m = evaluate_detections(labels, dets, EvalConfig(min_box_side=side, backend="pycocotools"))
        assert (m.num_labels, m.num_detections) == (n_labels, n_labels)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_box_areas_are_float32_products(backend):
    # w, h one float32 step above and below 32: w * h is 1024.00006 in float64 but exactly 1024 = 32**2 in
    # float32, so the toolbox counts the box (label and detection) as small as well as medium.
    pytest.importorskip(backend)
    w, h = np.nextafter(np.float32(32), np.float32(64)), np.nextafter(np.float32(32), np.float32(0))
    assert float(w) * float(h) > 1024 and w * h == np.float32(1024)
    xywh = [[10, 10, w, h], [100, 100, 60, 60]]
    labels = {"a": make_boxes([600_000] * 2, xywh, [0, 1])}
    dets = {"a": make_boxes([600_000] * 2, xywh, [0, 1], 0.9)}
    stats = ref_stats(labels, dets)[0]
    assert stats[3] == pytest.approx(1.0)  # AP_small: defined (-1 without a small label) and perfect
    np.testing.assert_allclose(evaluate_detections(labels, dets, EvalConfig(backend=backend)).stats, stats, atol=1e-9)


def test_hand_valued_cases():
    ts = [600_000, 600_000, 750_000, 900_000]  # > 2 tolerances apart: no cross-matching
    xywh = [[10, 10, 40, 30], [100, 50, 20, 40], [12, 12, 40, 30], [50, 60, 35, 35]]
    gt = make_boxes(ts, xywh, [0, 1, 0, 1])
    # early (t <= 0.5 s), too-small diagonal and too-thin labels: filtered, so missing them costs nothing
    ignored = make_boxes([400_000, 600_000, 600_000], [[0, 0, 50, 50], [0, 0, 15, 15], [0, 0, 60, 8]], [0, 0, 1])
    labels = {"a": np.concatenate([ignored, gt])}
    assert evaluate_detections(labels, {"a": make_boxes(ts, xywh, [0, 1, 0, 1], 0.9)}).mAP == pytest.approx(1.0)
    # detections 40 ms late still match (tolerance 50 ms); 60 ms late they belong to no label time
    late = make_boxes(np.asarray(ts) + 40_000, xywh, [0, 1, 0, 1], 0.9)
    m = evaluate_detections(labels, {"a": late[np.argsort(late["t"], kind="stable")]})
    assert m.mAP == pytest.approx(1.0)
    # label times closer than the tolerance share detections: each is a false positive at the other time
    close = make_boxes([600_000, 640_000], xywh[:2], [0, 1])
    assert evaluate_detections({"a": close}, {"a": make_boxes([600_000, 640_000], xywh[:2], [0, 1], 0.9)}).mAP < 1.0
    only_last = make_boxes([960_000], [xywh[3]], [1], 0.9)
    assert evaluate_detections(labels, {"a": only_last}).mAP == 0.0
    assert evaluate_detections(labels, {"a": only_last}, EvalConfig(time_tol_us=60_000)).mAP > 0.0
    assert evaluate_detections(labels, {"a": only_last}, EvalConfig(time_tol_us=60_000)).num_detections == 1
    # no detections at all, or for another recording: zero, not an error
    assert evaluate_detections(labels, {}).mAP == 0.0
    assert evaluate_detections(labels, {"b": gt}).mAP == 0.0
    # wrong class: zero AP
    assert evaluate_detections(labels, {"a": make_boxes(ts, xywh, [1, 0, 1, 0], 0.9)}).AP50 == 0.0
    with pytest.raises(ValueError, match="no labels left"):
        evaluate_detections({"a": ignored}, {})


def test_eval_events_cli_on_saved_files(tmp_path, capsys):
    labels, dets = random_set(seed=5, n_rec=2)
    labels["sub/rec9"] = labels.pop("rec1")
    dets["sub/rec9"] = dets.pop("rec1")
    # labels as a GEN1 folder in the toolbox's own dtype; detections as the .npz the trainer writes
    for name, boxes in labels.items():
        path = tmp_path / "gt" / f"{name}_bbox.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tb = np.zeros(len(boxes), TOOLBOX_DTYPE)
        for k in ("x", "y", "w", "h", "class_id", "track_id"):
            tb[k] = boxes[k]
        tb["ts"] = boxes["t"]
        np.save(path, tb)
    save_box_sets(tmp_path / "det.npz", dets)
    loaded = load_box_sets(tmp_path / "det.npz")
    assert sorted(loaded) == sorted(dets) and all((loaded[k] == dets[k]).all() for k in dets)
    out = tmp_path / "m.json"
    assert cli_main(["eval-events", "--labels", str(tmp_path / "gt"), "--detections", str(tmp_path / "det.npz"),
                     "--output", str(out), "--backend", "pycocotools"]) == 0
    row = json.loads(out.read_text())
    assert row["mAP"] == pytest.approx(ref_stats(labels, dets)[0][0], abs=1e-9)
    assert row["recordings"] == 2 and "mAP" in capsys.readouterr().out
    # detections as a folder with class_confidence: scores survive
    for name, boxes in dets.items():
        path = tmp_path / "dt" / f"{name}_bbox.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tb = np.zeros(len(boxes), TOOLBOX_DTYPE)
        for k in ("x", "y", "w", "h", "class_id"):
            tb[k] = boxes[k]
        tb["ts"], tb["class_confidence"] = boxes["t"], boxes["class_confidence"]
        np.save(path, tb)
    assert cli_main(["eval-events", "--labels", str(tmp_path / "gt"), "--detections", str(tmp_path / "dt"),
                     "--output", str(out), "--skip-ms", "0", "--time-tol-ms", "25"]) == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx(ref_stats(labels, dets, skip_us=0, tol=25_000)[0][0], abs=1e-9)
    # bad input: one clear error naming the file
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert cli_main(["eval-events", "--labels", str(tmp_path / "gt"), "--detections", str(tmp_path / "bad.npz")]) == 1
    assert "bad.npz" in capsys.readouterr().err
