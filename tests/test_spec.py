"""The layer-spec text: parsing, errors, and round trips through models and presets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn import Sequential, SpecError
from numbacnn.layers.conv2d import Conv2D
from numbacnn.presets import PRESETS
from numbacnn.spec import LayerSpec, layer_text, make_layer, parse

BUILTINS = ["avgpool2d", "conv2d", "dense", "dropout", "flatten", "maxpool2d", "relu"]


def spec_error(text: str) -> str:
    """The message of the SpecError that building a model from ``text`` raises; it must be one line."""
    with pytest.raises(SpecError) as info:
        Sequential(text)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# -- parsing ---------------------------------------------------------------------------------------------


def test_names_without_arguments():
    assert parse("flatten relu") == [LayerSpec("flatten"), LayerSpec("relu")]


def test_positional_and_keyword_arguments():
    [conv] = parse("conv2d(32, 3, stride=2)")
    assert conv == LayerSpec("conv2d", [32, 3], {"stride": 2})


def test_bare_word_is_a_string():
    [conv] = parse("conv2d(8, padding=same)")
    assert conv.kwargs == {"padding": "same"}


def test_true_false_none_are_literals_not_words():
    [conv] = parse("conv2d(8, bias=False, stride=None)")
    assert conv.kwargs == {"bias": False, "stride": None}


def test_lists_and_tuples_become_lists():
    [a, b] = parse("conv2d(8, [3, 5]) maxpool2d(size=(2, 3))")
    assert a.args == [8, [3, 5]]
    assert b.kwargs == {"size": [2, 3]}


def test_floats_and_negative_numbers():
    [d] = parse("dropout(0.25) ")
    assert d.args == [0.25]
    assert parse("x(-1)")[0].args == [-1]


def test_qualified_name_keeps_package():
    assert [s.name for s in parse("numbacnn-contrib:leaky_relu numbacnn:relu")] == [
        "numbacnn-contrib:leaky_relu", "numbacnn:relu"]


@pytest.mark.parametrize("text", [
    "conv2d(32,3) relu flatten",
    "conv2d(32,3),relu,flatten",
    "  conv2d( 32 , 3 )\n\trelu ,  flatten  ",
    "conv2d(32,3)relu flatten",
])
def test_commas_and_whitespace_separate_layers(text):
    assert parse(text) == [LayerSpec("conv2d", [32, 3]), LayerSpec("relu"), LayerSpec("flatten")]


def test_newlines_inside_arguments_are_allowed():
    assert parse("conv2d(32,\n  3)") == [LayerSpec("conv2d", [32, 3])]


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("conv2d(32,3", "Unclosed parenthesis"),
    ("relu dense(10, (2)", "Unclosed parenthesis"),
    ("conv2d(32,3) 123", "Cannot read the layer spec at '123'"),
    ("@@@", "Cannot read the layer spec"),
    ("conv2d(32,3)(4)", "Cannot read the layer spec at '(4)'"),
    ("conv2d(32,,3)", "Cannot read the arguments of conv2d"),
    ("conv2d(x=)", "Cannot read the arguments of conv2d"),
    ("conv2d(32,\n      3,,)", "Cannot read the arguments of conv2d(32, 3,,)"),
    ("conv2d(1+2)", "must be numbers, words or lists"),
    ("conv2d(os.system)", "must be numbers, words or lists"),
    ("conv2d(*x)", "must be numbers, words or lists"),
    ("conv2d(**x)", "** is not allowed"),
    ("", "empty"),
    (" , ,\n", "empty"),
])
def test_unreadable_specs_raise_one_line_spec_error(text, words):
    assert words in spec_error(text)


def test_unknown_layer_lists_the_known_ones():
    message = spec_error("conv2d(8,3) relu softmax")
    assert "Unknown layer 'softmax'" in message
    for name in BUILTINS:
        assert name in message


def test_unknown_package_in_qualified_name():
    message = spec_error("no-such-package:relu")
    assert "no-such-package" in message and "'relu'" in message


@pytest.mark.parametrize("text, words", [
    ("dense()", "dense(units, bias=True)"),
    ("relu(3)", "relu()"),
    ("conv2d(8, 3, 1, 'valid', True, 7)", "conv2d(filters, kernel_size=3, stride=1, padding='valid', bias=True)"),
    ("conv2d(8, colour=3)", "conv2d(filters, kernel_size=3"),
    ("conv2d(8, filters=4)", "multiple values"),
])
def test_wrong_arguments_show_the_signature(text, words):
    assert words in spec_error(text)


@pytest.mark.parametrize("text, words", [
    ("conv2d(0)", "filters must be a whole number >= 1"),
    ("conv2d(2.5)", "filters must be a whole number"),
    ("conv2d(8, padding=wide)", "padding must be 'valid', 'same' or a number"),
    ("conv2d(8, kernel_size=[1, 2, 3])", "kernel_size must be one number or two"),
    ("dense(True)", "units must be a whole number"),
    ("dropout(1.0)", "rate must be a number from 0"),
    ("maxpool2d(0)", "size must be a whole number"),
])
def test_bad_hyperparameter_values_say_what_is_allowed(text, words):
    assert words in spec_error(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("conv2d(32,3)relu flatten=[]'\"_-:.\n\t0x"), max_size=40))
def test_parse_raises_nothing_but_spec_error(text):
    try:
        specs = parse(text)
    except SpecError:
        return
    assert specs and all(isinstance(s, LayerSpec) for s in specs)


# -- round trips -------------------------------------------------------------------------------------------


def configs(model: Sequential) -> list[tuple[str, dict]]:
    return [(layer.name, layer.get_config()) for layer in model.layers]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_spec_round_trips(preset):
    model = Sequential(PRESETS[preset])
    again = Sequential(model.spec)
    assert configs(again) == configs(model)
    assert again.spec == model.spec
    assert again.build().count_params() == model.build().count_params()


def test_spec_text_round_trips_keyword_form_of_every_builtin():
    model = Sequential("conv2d(4, [3, 2], stride=[1, 2], padding=1, bias=False) relu avgpool2d(2, stride=1) "
                       "maxpool2d([2, 1]) flatten dropout(0.1) dense(5, bias=False)")
    assert configs(Sequential(model.spec)) == configs(model)


padding = st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 3),
                    st.lists(st.integers(0, 3), min_size=2, max_size=2))
pair = st.one_of(st.integers(1, 7), st.lists(st.integers(1, 7), min_size=2, max_size=2))


@settings(max_examples=60, deadline=None)
@given(filters=st.integers(1, 512), kernel_size=pair, stride=pair, padding=padding, bias=st.booleans())
def test_conv2d_layer_text_round_trips(filters, kernel_size, stride, padding, bias):
    layer = Conv2D(filters, kernel_size, stride=stride, padding=padding, bias=bias)
    text = layer_text(layer.name, layer.get_config())
    [spec] = parse(text)
    again = make_layer(spec)
    assert type(again) is Conv2D
    assert again.get_config() == layer.get_config()
    # The short form that repr gives reads back too.
    assert make_layer(parse(repr(layer))[0]).get_config() == layer.get_config()
