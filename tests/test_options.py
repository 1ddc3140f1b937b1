"""Each option declared once (simcore.options): the one checker, and the flags, checks
and saved state that come from the declarations."""
import re

import pytest

from simcore import Config, train
from simcore.options import BadType, Option, check, options_of


@pytest.mark.parametrize("opt,good,bad,want", [
    (Option(int, bounds="[1, inf)"), 1, 0, "an integer >= 1"),
    (Option(float, bounds="(0, inf)"), 1e-9, float("inf"), "a finite number > 0"),
    (Option(float, bounds="(0, 1]"), 1, 0.0, "a fraction in (0, 1]"),
    (Option(float, bounds="[0, 1)"), 0, 1.0, "a fraction in [0, 1)"),
    (Option(int, bounds="[2, 8]"), 8, 9, "an integer in [2, 8]"),
    (Option(str, choices=("a", "b", "c")), "c", "d", "a, b or c"),
    (Option(int, bounds="[1, inf)", none=True), None, 0, "an integer >= 1 or null"),
])
def test_check_passes_a_good_value_and_names_what_a_bad_one_should_be(opt, good, bad, want):
    assert check("x", good, opt) == good
    with pytest.raises(ValueError, match=re.escape(f"x must be {want}, got {bad!r}")):
        check("x", bad, opt)


@pytest.mark.parametrize("opt,value", [(Option(int), True), (Option(int), 1.0), (Option(float), "1"),
                                       (Option(float), False), (Option(bool), 1), (Option(str), None)])
def test_a_value_of_the_wrong_type_is_a_type_error_and_a_value_error(opt, value):
    with pytest.raises(TypeError):
        check("x", value, opt)
    with pytest.raises(ValueError):
        check("x", value, opt)
    assert issubclass(BadType, TypeError) and issubclass(BadType, ValueError)


def test_a_bad_declaration_fails_where_it_is_made():
    with pytest.raises(ValueError, match="bounds"):
        Option(str, bounds="[0, 1)")
    with pytest.raises(ValueError, match="the default must be an integer >= 1, got 0"):
        Option(int, 0, bounds="[1, inf)")


@pytest.mark.parametrize("cls", [Config, train.TrainState])
def test_each_field_is_declared_with_the_type_it_is_annotated_with(cls):
    for f in cls.__dataclass_fields__.values():
        opt = f.metadata["option"]
        assert f.type == opt.kind.__name__ + (" | None" if opt.none else ""), f.name
        assert f.default == opt.default, f.name


def test_every_flag_of_train_is_a_declared_option():
    actions = {a.dest: a for a in train.build_parser()._actions if a.dest != "help"}
    assert set(actions) == set(train.FLAGS)
    model = {k for k, opt in options_of(Config).items() if opt.flag}
    assert {"d_model", "class_everywhere", "null_class"} <= model and not {"image_size", "n_classes"} & model
    saved = {k for k, opt in options_of(train.TrainState).items() if opt.flag}
    for name in model | saved | {"preset"}:  # None: not given, so --resume knows which were
        assert actions[name].default is None, name
    assert "override the preset" in actions["class_everywhere"].help


def test_the_recipes_cover_the_optimisation_options_and_the_presets():
    optimisation = [k for k, opt in options_of(train.TrainState).items() if opt.flag == "optimisation"]
    assert set(train.RECIPES) == set(train.PRESETS)
    for preset, recipe in train.RECIPES.items():
        assert list(recipe) == optimisation, preset
        train.TrainState(**recipe, steps=1).check(preset)
    assert train.RECIPES["small"] == {k: options_of(train.TrainState)[k].default for k in optimisation}
