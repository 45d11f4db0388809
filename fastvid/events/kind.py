"""The events kind plugs into the core here: its set reader (fastvid.store.kinds), its models (the event
detectors, fastvid.train.models) and `fastvid shard events`.

Imported by the package root; everything heavy is imported inside the functions, so registering costs
nothing.
"""

from __future__ import annotations

import collections

from fastvid.store import kinds
from fastvid.store.inspect import histogram_lines
from fastvid.train import models

KIND = "events"


class EventsReader(kinds.KindReader):
    kind = KIND

    def open(self, opened):
        from fastvid.events.reading import opened_segments

        return opened_segments(opened)

    # What the event loaders plan with, per segment: its clock span, recording, event count, the recording's
    # end, and the segment's distinct label times (window_mode="labels" ends a window at each).
    metadata_components = ("json", "boxes.npy")
    PLANNING_FIELDS = ("recording", "segment", "t0", "t1", "num_events", "num_boxes", "recording_t_end", "sensor_size")

    def sample_metadata(self, key: str, components: dict[str, bytes], where: str) -> dict:
        meta = self.sample_json(key, components, where)
        if not meta:
            return {}
        out = {name: meta[name] for name in self.PLANNING_FIELDS if name in meta}
        if "boxes.npy" in components:
            from fastvid.events.codec import decode_boxes

            import numpy as np

            try:
                out["label_times"] = np.unique(decode_boxes(components["boxes.npy"])["t"]).tolist()
            except (ValueError, KeyError, OSError) as exc:
                raise ValueError(f"{where}: sample {key!r} has unreadable boxes ({exc})") from None
        return out

    def inspect_sample(self, key, fields, info, acc, verify):
        # Event samples carry boxes, not one label: count boxes per class instead.
        acc.setdefault("boxes_per_class", collections.Counter())
        acc.setdefault("recordings", set())
        problems = []
        if info is not None:
            acc["num_events"] = acc.get("num_events", 0) + int(info.get("num_events", 0))
            acc["recordings"].add(info.get("recording"))
            if info.get("t1") is not None and info.get("t0") is not None:
                acc["duration_s"] = acc.get("duration_s", 0.0) + (info["t1"] - info["t0"]) / 1e6
        if "boxes.npy" in fields:
            import io

            import numpy as np

            try:
                boxes = np.load(io.BytesIO(fields["boxes.npy"]), allow_pickle=False)
                for cid, n in zip(*np.unique(boxes["class_id"], return_counts=True)):
                    acc["boxes_per_class"][int(cid)] += int(n)
            except (ValueError, KeyError, OSError) as exc:
                problems.append(f"{key}.boxes.npy unreadable ({exc})")
        return problems

    def inspect_summary(self, acc, classes):
        per_class = acc.get("boxes_per_class", collections.Counter())

        def name_of(label):
            return classes[label] if 0 <= label < len(classes) else f"<label {label} not in classes>"

        return {"num_events": acc.get("num_events", 0), "num_recordings": len(acc.get("recordings", ())),
                "total_duration_s": round(acc.get("duration_s", 0.0), 2),
                "boxes_per_class": {name_of(c): n for c, n in sorted(per_class.items())},
                "empty_classes": [c for i, c in enumerate(classes) if per_class[i] == 0]}

    def inspect_lines(self, summary):
        lines = [f"{summary['num_events']:,} events from {summary['num_recordings']} recordings, "
                 f"{summary['total_duration_s']:.1f} s of recording"]
        per_class = summary["boxes_per_class"]
        if per_class:
            counts = list(per_class.values())
            lines.append(f"boxes per class: min {min(counts)}, max {max(counts)}")
            lines += histogram_lines("boxes per class", per_class, limit=20)
        if summary["empty_classes"]:
            lines.append(f"classes with no boxes: {summary['empty_classes'][:10]}")
        return lines


def _load_models() -> None:
    from fastvid.events.detect import model  # noqa: F401 (its decorators register the detectors)


def _shard_arguments(parser) -> None:
    from fastvid.events import cli

    cli.add_arguments(parser)


def _shard_run(args) -> int:
    from fastvid.events import cli

    return cli.run(args)


kinds.register_reader(EventsReader())
kinds.register_shard_command(kinds.ShardCommand(
    "events", "event-camera recordings -> event shards", _shard_arguments, _shard_run))
models.add_model_source(_load_models)
