"""`fastvid eval-events --labels L --detections D`: Prophesee COCO mAP of saved detections.

L and D are each a .npz (one box array per recording), a folder of `<recording>_bbox.npy` files, or
(labels) an event shard set. Prints mAP / AP50 / AP75 and writes all numbers as JSON with --output.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--labels", required=True, help="ground truth: .npz, folder of *_bbox.npy, or event shard set")
    parser.add_argument("--detections", required=True, help="detections: .npz or folder of *_bbox.npy (score in class_confidence)")
    parser.add_argument("--preset", default="gen1", choices=["gen1", "gen4"], help="filter thresholds of the data set (default: gen1)")
    parser.add_argument("--skip-ms", type=float, default=None, help="ignore boxes up to this time, in ms (default: 500)")
    parser.add_argument("--min-box-diag", type=float, default=None, help="minimum box diagonal in px (gen1: 30, gen4: 60)")
    parser.add_argument("--min-box-side", type=float, default=None, help="minimum box side in px (gen1: 10, gen4: 20)")
    parser.add_argument("--time-tol-ms", type=float, default=None, help="detections within this time of a label time count (default: 50)")
    parser.add_argument("--classes", default=None, help="comma-separated class names, index = class_id (default: car,pedestrian)")
    parser.add_argument("--backend", default="auto", choices=["auto", "pycocotools", "faster_coco_eval"], help="COCO implementation")
    parser.add_argument("--output", default=None, help="write the metrics here as JSON")


def config_from_args(args):
    from fastvid.events.detect.evaluate import eval_config

    return eval_config(
        args.preset,
        skip_us=None if args.skip_ms is None else int(round(args.skip_ms * 1000)),
        min_box_diag=args.min_box_diag, min_box_side=args.min_box_side,
        time_tol_us=None if args.time_tol_ms is None else int(round(args.time_tol_ms * 1000)),
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        backend=args.backend)


def run(args) -> int:
    from fastvid.events.detect.boxsets import load_box_sets
    from fastvid.events.detect.evaluate import STAT_NAMES, evaluate_detections
    from fastvid.store.manifest import write_json_atomic

    cfg = config_from_args(args)
    labels = load_box_sets(args.labels)
    detections = load_box_sets(args.detections)
    unknown = sorted(set(detections) - set(labels))
    if unknown and len(unknown) == len(detections):
        raise ValueError(f"{args.detections}: none of its recordings is in {args.labels} (e.g. {unknown[:3]})")
    metrics = evaluate_detections(labels, detections, cfg)
    print(f"mAP {metrics.mAP:.4f}  AP50 {metrics.AP50:.4f}  AP75 {metrics.AP75:.4f}  "
          f"({metrics.num_images} label times, {metrics.num_labels} labels, {metrics.num_detections} detections, "
          f"{len(labels)} recordings)")
    if args.output:
        row = {**dict(zip(STAT_NAMES, metrics.stats)), **metrics.to_dict(), "recordings": len(labels),
               "unmatched_recordings": unknown, "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}}
        write_json_atomic(row, args.output)
    return 0
