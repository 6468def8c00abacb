import pytest
from torch import nn

from lightning_embeddings.layers import resolve_layers
from digits import DigitsCNN


def test_ints_index_named_modules_as_3lc_and_strs_name_modules():
    model = DigitsCNN()
    names = [name for name, _ in model.named_modules()]
    layers = resolve_layers(model, [0, 3, "head.1"])
    assert [(l.index, l.name) for l in layers] == [(0, ""), (3, names[3]), (names.index("head.1"), "head.1")]
    assert layers[0].column == "root" and layers[0].module is model
    assert layers[1].name == "features.1" and isinstance(layers[1].module, nn.ReLU)


def test_index_out_of_range_names_the_range_and_last_modules():
    with pytest.raises(ValueError, match=r"index 99 is out of range: the model has 13 modules \(0\.\.12\).*11: 'head\.3' \(Linear\), "
                                         r"12: 'val_acc' \(MulticlassAccuracy\)"):
        resolve_layers(DigitsCNN(), [99])


def test_unknown_name_suggests_nearest_names_with_indices():
    with pytest.raises(ValueError, match=r"'head\.l' is not a module of DigitsCNN\. Nearest: .*'head\.1' \(Linear\)"):
        resolve_layers(DigitsCNN(), ["head.l"])
    with pytest.raises(ValueError, match=r"9: 'head\.1'"):
        resolve_layers(DigitsCNN(), ["head.l"])


def test_two_specs_naming_one_module_is_an_error():
    with pytest.raises(ValueError, match=r"layer specs 9 and 'head\.1' both name module 'head\.1'"):
        resolve_layers(DigitsCNN(), [9, "head.1"])


def test_bad_spec_types():
    with pytest.raises(TypeError, match="int index or a module name"):
        resolve_layers(DigitsCNN(), [1.5])
    with pytest.raises(TypeError):
        resolve_layers(DigitsCNN(), [True])
