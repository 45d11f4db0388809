"""The backend contract's pure parts: rebatching Chunk | Failure streams, LastBatch, and backend choice."""

from __future__ import annotations

import pytest
import torch

from fastvid import _gpu
from fastvid.pipeline import backends
from fastvid.pipeline.contract import Chunk, Failure, FailureBudgetExceeded, FailurePolicy, LastBatch, RebatchStats, rebatch


def chunk(start: int, n: int) -> Chunk:
    """n clips whose video value and label are their running number, keys 'k<number>'."""
    ids = torch.arange(start, start + n)
    video = ids.float().view(n, 1, 1, 1, 1).expand(n, 3, 2, 1, 1).clone()
    return Chunk({"video": video, "label": ids, "clip": list(ids.tolist())}, [f"k{i}" for i in ids.tolist()])


def ids(batches) -> list[list[int]]:
    return [b["label"].tolist() for b in batches]


def test_chunks_are_cut_into_exact_batches_in_order():
    stream = [chunk(0, 3), chunk(3, 2), chunk(5, 4), chunk(9, 1)]
    batches = list(rebatch(stream, batch_size=4, num_batches=2))
    assert ids(batches) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b["key"] for b in batches][1] == ["k4", "k5", "k6", "k7"]
    assert all(torch.equal(b["video"][:, 0, 0, 0, 0], b["label"].float()) for b in batches)
    assert [b["clip"] for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # list fields are cut with the rows


def test_rebatch_cuts_a_smaller_last_batch_for_partial():
    stream = [chunk(0, 3), chunk(3, 4)]
    assert ids(rebatch(stream, batch_size=3, num_batches=3, last_rows=1)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert LastBatch("partial") is LastBatch.PARTIAL


def test_rebatch_drops_leading_clips():
    # the rebatcher drops the used clips of the first item, then cuts as usual
    stream = [chunk(2, 2), chunk(4, 2), chunk(6, 2)]
    assert ids(rebatch(stream, batch_size=2, num_batches=2, drop_clips=1)) == [[3, 4], [5, 6]]


def test_failures_are_counted_and_the_epoch_is_completed_by_repeating_clips():
    stats = RebatchStats()
    stream = [chunk(0, 2), Failure("bad", "broken"), chunk(2, 1)]
    batches = list(rebatch(stream, batch_size=2, num_batches=3, stats=stats))
    # 3 clips for 3 batches of 2: the stream runs dry, the first batch's clips fill the rest
    assert ids(batches) == [[0, 1], [2, 0], [1, 0]]
    assert stats.failures == 1 and stats.failed_keys == ["bad"] and stats.batches == 3 and stats.clips == 6


def test_nothing_decodable_is_an_error_not_a_hang():
    def endless_failures():
        while True:
            yield Failure("x", "broken")

    with pytest.raises(RuntimeError, match="4 samples in a row failed"):
        list(rebatch(endless_failures(), batch_size=2, num_batches=1, max_failures_in_a_row=3))
    with pytest.raises(RuntimeError, match=r"no sample could be decoded from here \(2 samples failed; last: 'x': b\)"):
        list(rebatch([Failure("x", "a"), Failure("x", "b")], batch_size=2, num_batches=1, where="here"))


def test_past_the_failure_budget_the_epoch_fails_naming_the_bad_samples():
    stream = [chunk(0, 2), Failure("bad1", "e1"), Failure("bad2", "e2"), chunk(2, 2), Failure("bad3", "e3"), chunk(4, 2)]
    stats = RebatchStats()
    assert ids(rebatch(list(stream), batch_size=2, num_batches=3, stats=stats, max_failures=3)) == [[0, 1], [2, 3], [4, 5]]
    assert stats.failed_keys == ["bad1", "bad2", "bad3"]
    with pytest.raises(FailureBudgetExceeded, match=r"3 samples of here failed this epoch, more than the failure budget "
                                                    r"\(2\): 'bad1', 'bad2', 'bad3'; last error: e3"):
        list(rebatch(stream, batch_size=2, num_batches=3, max_failures=2, where="here"))


def test_failure_policy_budget_is_a_count_or_a_fraction_of_the_epoch():
    assert FailurePolicy(5).limit(10_000) == 5
    assert FailurePolicy(0.01).limit(10_000) == 100
    assert FailurePolicy(0.01).limit(100) == 16  # never fewer than min_budget for a fractional budget
    assert FailurePolicy(None).limit(10) == float("inf")


def test_last_batch_policy_names_the_drop_last_rule():
    assert LastBatch.from_drop_last(True) is LastBatch.DROP and LastBatch.from_drop_last(False) is LastBatch.WRAP
    assert LastBatch("wrap") is LastBatch.WRAP


def test_auto_falls_back_to_a_cpu_decoder_below_nvdec_size_and_for_unknown_backends():
    # A 64x48 H.264 set on a GPU: NVDEC (DALI and every NVDEC candidate) cannot take it.
    assert backends.choose_backend("video", "auto", "cuda", "h264", 64, 48) == "pyav"
    # On the CPU, DALI measured fastest for the codecs its CPU decoder reads; PyAV decodes every other one.
    assert backends.choose_backend("video", "auto", "cpu", "vp9", 64, 48) == ("dali" if _gpu.dali_available() else "pyav")
    assert backends.choose_backend("video", "auto", "cpu", "h264", 320, 240) == "pyav"
    assert backends.choose_backend("video", "pyav-threads", "cpu", "h264", 1, 1) == "pyav-threads"
    with pytest.raises(ValueError, match="unknown video backend 'warp'"):
        backends.choose_backend("video", "warp", "cpu", "h264")
    assert all(set(backends.auto_order("video", d)) <= set(backends.names("video")) for d in ("cpu", "cuda"))
