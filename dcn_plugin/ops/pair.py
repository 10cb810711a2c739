"""The one int-or-pair argument type of the package (kernel sizes, strides, paddings, dilations, output and
crop sizes) and its conversion, scriptable (``torch.jit.script``) like the functions that use it."""
from numbers import Integral
from typing import Any, List, Sequence, Tuple, Union

import torch

#: An int (the same value for height and width) or a pair ``(h, w)``. Spelled as a union TorchScript
#: compiles, so the functions taking it script as they are.
IntPair = Union[int, Tuple[int, int], List[int]]

__all__ = ['IntPair', 'to_pair']


def _python_ints(value: Any) -> List[int]:
    """Eager-mode conversion: ``[v, v]`` for an int, the ints of a sequence of ints, ``[]`` otherwise
    (bools, floats, tensors, strings, sequences holding anything but ints)."""
    if isinstance(value, (bool, torch.Tensor, str, bytes)):
        return []
    if isinstance(value, Integral):
        return [int(value), int(value)]
    if isinstance(value, Sequence) and all(isinstance(v, Integral) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return []


def _scripted_ints(value: IntPair) -> List[int]:
    # TorchScript's types already guarantee ints; lists of another length are refused by to_pair
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list):
        return value
    return [value[0], value[1]]


def to_pair(value: IntPair, name: str) -> List[int]:
    """``value`` as ``[h, w]``.

    Args:
        value: an int or a sequence of two ints; numpy integers count as ints, bools do not.
        name: the argument's name, for the error message.

    Raises:
        TypeError: naming ``name``, unless ``value`` is an int or a pair of ints.
    """
    if torch.jit.is_scripting():
        pair = _scripted_ints(value)
    else:
        pair = _python_ints(value)
    if len(pair) != 2:
        raise TypeError(f'{name} must be an int or a pair of ints, got {value}')
    return pair
