"""`fastvid bench train --variants`: model-step variants are timed and their loss after N steps is
checked against eager fp32 (the real models, synthetic clips)."""

from __future__ import annotations

import pytest
import torch

from fastvid.benchmarks.step_variants import (GPU_VARIANTS, StepVariantsBench, Variant, loss_after, measure_variants,
                                              variants_by_name)
from fastvid.train.models import get_model


def build():
    return get_model("r3d_18", num_classes=5, width=4).train()


# Big enough that BatchNorm statistics are not taken over a handful of values: with batch 2 at 16x16 the
# last stages see 1x1 maps and fp32 rounding of another memory format grows to 1% within 4 steps.
SHAPE = dict(batch_size=4, clip_len=4, crop=32, num_classes=5, steps=2, warmup=1, repeats=1, check_steps=6)


def test_cpu_variants_are_timed_and_match_eager_numerics():
    cpu = torch.device("cpu")
    res = measure_variants(build, cpu, variants_by_name(["eager", "eager_channels_last"], cpu), StepVariantsBench(**SHAPE))
    eager, cl = res["variants"]["eager"], res["variants"]["eager_channels_last"]
    assert eager["loss"] == eager["reference_loss"]  # the same computation as the reference
    assert cl["numerics_ok"] and abs(cl["loss"] - cl["reference_loss"]) <= 1e-3 * cl["reference_loss"] + 1e-4
    assert eager["clips_per_s"] > 0 and cl["clips_per_s"] > 0 and res["best"] in ("eager", "eager_channels_last")
    with pytest.raises(ValueError, match="unknown step variant"):
        variants_by_name(["warp_speed"], cpu)


def test_the_numerics_check_can_tell_a_different_training_run():
    cpu = torch.device("cpu")
    shape = dict(clip_len=4, crop=32, num_classes=5)
    a = loss_after(build, cpu, Variant("eager"), 4, 6, shape, lr=0.01)
    b = loss_after(build, cpu, Variant("eager"), 4, 6, shape, lr=0.012)  # another lr: another run
    assert a == loss_after(build, cpu, Variant("eager"), 4, 6, shape, lr=0.01)
    assert abs(a - b) > 1e-3 * abs(a) + 1e-4


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_variants_match_eager_within_tolerance():
    cuda = torch.device("cuda")
    res = measure_variants(lambda: build().to(cuda), cuda, list(GPU_VARIANTS), StepVariantsBench(**{**SHAPE, "steps": 3}))
    assert set(res["variants"]) == {v.name for v in GPU_VARIANTS}
    for name, entry in res["variants"].items():
        assert entry["numerics_ok"], (name, entry)
        assert entry["clips_per_s"] > 0
