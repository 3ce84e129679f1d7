import pytest

from galmorph.core import specs
from galmorph.core.errors import GalmorphError


def test_c2_matches_the_paper_count_at_100x100x1_4way():
    spec = specs.resolve("c2", (100, 100, 1), 4)
    assert spec.total_params == 2_394_308
    assert spec.flatten_size == 8192
    # BN moving statistics are the only non-trainable parameters: 2 per channel of 32+64+128
    assert spec.total_params - spec.trainable_params == 2 * (32 + 64 + 128)


@pytest.mark.parametrize("size,flat_c2,flat_c1", [(100, 8192, 135_424), (69, 2048, 64 * 30 * 30), (63, 2048, 64 * 27 * 27), (38, 128, 64 * 15 * 15)])
def test_flatten_sizes_follow_the_input(size, flat_c2, flat_c1):
    assert specs.resolve("c2", (size, size, 1), 3).flatten_size == flat_c2
    assert specs.resolve("c1", (size, size, 3), 3).flatten_size == flat_c1


def test_c1_is_about_34_7_million_parameters_and_bn_is_an_option():
    with_bn = specs.resolve("c1", (100, 100, 1), 4)
    without = specs.resolve("c1", (100, 100, 1), 4, batchnorm=False)
    assert 34_600_000 < without.total_params < 34_800_000
    assert with_bn.total_params - without.total_params == 4 * (32 + 64)
    assert [l.type for l in without.layers].count("bn") == 0


def test_width_dense_and_dropout_overrides():
    spec = specs.resolve("c2", (69, 69, 1), 4, width=0.5, dense_units=64, dropout=0.25)
    convs = [l.filters for l in spec.layers if l.type == "conv"]
    assert convs == [16, 32, 32, 64]
    assert [l.units for l in spec.layers if l.type == "dense"] == [64, 64]
    assert [l.rate for l in spec.layers if l.type == "dropout"] == [0.25]


def test_too_small_input_is_a_clear_error():
    with pytest.raises(GalmorphError, match=r"too small for c2.*at least 38x38"):
        specs.resolve("c2", (30, 30, 1), 4)
    assert specs.min_input_size("c2") == 38


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "c3"}, "unknown model"),
    ({"n_classes": 1}, "at least 2 classes"),
    ({"colour": True}, "has no option colour"),
])
def test_bad_arguments(kwargs, match):
    args = {"name": "c2", "input_shape": (69, 69, 1), "n_classes": 4, **kwargs}
    with pytest.raises(GalmorphError, match=match):
        specs.resolve(**args)
