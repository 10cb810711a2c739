"""Does a checkpoint fit a model: training-only branches may differ when the weights are loaded to predict."""
import pytest
import torch
from torch import nn

from dcn_plugin.utils.state_dict import (
    CheckpointMismatchError,
    check_checkpoint_matches,
    compare_state_dict,
    register_training_only_keys,
)


class _Head(nn.Module):
    def __init__(self, with_branch: bool):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        if with_branch:
            self.train_only_cls = nn.Linear(4, 2)


def test_training_only_keys_are_ignored_for_inference_only():
    register_training_only_keys(r'(^|\.)train_only_cls\.')
    trained = {'state_dict': _Head(with_branch=True).state_dict()}
    plain = _Head(with_branch=False)
    # to predict: the surplus training-only weights do not matter
    assert not compare_state_dict(plain, trained['state_dict'], inference=True)
    check_checkpoint_matches(plain, trained, 'ckpt', inference=True)
    # and the other way round: a model with the branch predicts without those weights
    assert not compare_state_dict(_Head(with_branch=True), _Head(with_branch=False).state_dict(), inference=True)
    # to resume (optimizer state of the same parameters), the fit must be exact
    diff = compare_state_dict(plain, trained['state_dict'])
    assert diff.unexpected == ['train_only_cls.weight', 'train_only_cls.bias']
    with pytest.raises(CheckpointMismatchError, match='train_only_cls.weight'):
        check_checkpoint_matches(plain, trained, 'ckpt', action='resume from')


def test_other_differences_still_refused_for_inference():
    register_training_only_keys(r'(^|\.)train_only_cls\.')
    state = _Head(with_branch=False).state_dict()
    state['fc.weight'] = torch.zeros(5, 4)
    with pytest.raises(CheckpointMismatchError, match=r'fc.weight \(checkpoint \(5, 4\), model \(3, 4\)\)'):
        check_checkpoint_matches(_Head(with_branch=True), {'state_dict': state}, 'ckpt', inference=True)
