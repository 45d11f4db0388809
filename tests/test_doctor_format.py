"""`fastvid doctor` figures keep significant digits: a slow stage reads "0.5 clips/s", never "0 clips/s"."""

from __future__ import annotations

import pytest

from fastvid.doctor import STAGES, sig, summary_line, table


@pytest.mark.parametrize("x, text", [
    (0.5, "0.5"), (0.04, "0.04"), (0.012345, "0.0123"), (0.00012345, "0.000123"), (1.0, "1"), (2.25, "2.25"),
    (12.345, "12.3"), (123.45, "123"), (1234.7, "1235"), (9.996, "10"), (0.09996, "0.1"), (-0.5, "-0.5"),
    (0.0, "0"), (float("inf"), "inf"),
])
def test_sig_keeps_three_significant_digits(x, text):
    assert sig(x) == text


def test_sig_digits_argument():
    assert sig(3.14159, digits=5) == "3.1416" and sig(3.14159, digits=1) == "3"


def _result(rates: dict, loader_rate: float) -> dict:
    bottleneck = min(STAGES, key=lambda s: rates[s])
    return {"stages": {s: {"ms_per_clip": 1000 / rates[s], "parallelism": 1, "clips_per_s": rates[s]} for s in STAGES},
            "bottleneck": bottleneck, "loader_clips_per_s": loader_rate,
            "summary": summary_line(bottleneck, rates, loader_rate, "pyav"),
            "tune": {"best": {"threads": 1, "prefetch": 2, "clips_per_s": 0.75}}}


def test_slow_training_step_is_not_printed_as_zero():
    # what doctor measured on a 2-core CPU: the model step at half a clip per second
    rates = {s: 40.0 for s in STAGES} | {"training step": 0.5}
    result = _result(rates, loader_rate=3.25)
    assert result["summary"].startswith("bottleneck: training step (0.5 clips/s; loader 3.25 clips/s with backend 'pyav', "
                                        "model alone 0.5 clips/s) -> knob: ")
    text = table(result)
    step_row = next(line for line in text.splitlines() if line.startswith("training step"))
    assert step_row.split()[2:6] == ["2000", "1", "0.5", "<-"]  # ms/clip, parallel, clips/s, bottleneck mark
    assert "(0.75 clips/s)" in text and " 0 clips/s" not in text
