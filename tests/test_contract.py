"""The backend contract's pure parts: rebatching Chunk | Failure streams, LastBatch, and backend choice."""

from __future__ import annotations

import pytest
import torch

from fastvid.data import backends
from fastvid.data.contract import Chunk, Failure, LastBatch, RebatchStats, rebatch


def chunk(start: int, n: int) -> Chunk:
    """n clips whose video value and label are their running number, keys 'k<number>'."""
    ids = torch.arange(start, start + n)
    return Chunk(ids.float().view(n, 1, 1, 1, 1).expand(n, 3, 2, 1, 1).clone(), ids, [f"k{i}" for i in ids.tolist()])


def ids(batches) -> list[list[int]]:
    return [b.label.tolist() for b in batches]


def test_chunks_are_cut_into_exact_batches_in_order():
    stream = [chunk(0, 3), chunk(3, 2), chunk(5, 4), chunk(9, 1)]
    batches = list(rebatch(stream, batch_size=4, num_batches=2))
    assert ids(batches) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.keys for b in batches][1] == ["k4", "k5", "k6", "k7"]
    assert all(torch.equal(b.video[:, 0, 0, 0, 0], b.label.float()) for b in batches)


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
    with pytest.raises(RuntimeError, match=r"no clip could be decoded from here \(2 samples failed; last: 'x': b\)"):
        list(rebatch([Failure("x", "a"), Failure("x", "b")], batch_size=2, num_batches=1, where="here"))


def test_last_batch_policy_names_the_drop_last_rule():
    assert LastBatch.from_drop_last(True) is LastBatch.DROP and LastBatch.from_drop_last(False) is LastBatch.WRAP
    assert LastBatch("wrap") is LastBatch.WRAP


def test_auto_falls_back_to_a_cpu_decoder_below_nvdec_size_and_for_unknown_backends():
    # A 64x48 H.264 set on a GPU: NVDEC (DALI and every NVDEC candidate) cannot take it.
    assert backends.choose_backend("auto", "cuda", "h264", 64, 48) == "pyav"
    # On the CPU, PyAV measured fastest and decodes every codec.
    assert backends.choose_backend("auto", "cpu", "vp9", 64, 48) == "pyav"
    assert backends.choose_backend("auto", "cpu", "h264", 320, 240) == "pyav"
    assert backends.choose_backend("pyav-threads", "cpu", "h264", 1, 1) == "pyav-threads"
    with pytest.raises(ValueError, match="unknown backend 'warp'"):
        backends.choose_backend("warp", "cpu", "h264")
    assert all(set(order) <= set(backends.REGISTRY) for order in backends.AUTO_ORDER.values())
