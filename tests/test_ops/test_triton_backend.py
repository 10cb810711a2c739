"""The rule that chooses the CUDA kernels of the convolution (a pure function, tested on the CPU)."""
import pytest
import torch

from dcn_plugin.ops import backend
from dcn_plugin.ops.backend import choose_cuda_backend


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32])
def test_auto_runs_triton_for_its_dtypes_when_importable(dtype):
    assert choose_cuda_backend('auto', dtype, deterministic=False, have_triton=True) == 'triton'
    assert choose_cuda_backend('auto', dtype, deterministic=False, have_triton=False) == 'cuda'


@pytest.mark.parametrize('requested', ['auto', 'triton', 'cuda'])
def test_float64_and_deterministic_mode_run_the_cxx_kernels(requested):
    assert choose_cuda_backend(requested, torch.float64, deterministic=False, have_triton=True) == 'cuda'
    assert choose_cuda_backend(requested, torch.float32, deterministic=True, have_triton=True) == 'cuda'


def test_the_user_choice_of_cxx_kernels_wins():
    assert choose_cuda_backend('cuda', torch.float16, deterministic=False, have_triton=True) == 'cuda'


def test_triton_chosen_without_triton_raises():
    with pytest.raises(RuntimeError, match='triton cannot be imported'):
        choose_cuda_backend('triton', torch.float32, deterministic=False, have_triton=False)


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="requested must be one of 'auto', 'cuda', 'triton'"):
        choose_cuda_backend('cudnn', torch.float32, deterministic=False, have_triton=True)


def test_setter_overrides_the_environment_variable(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, 'Triton')
    assert backend.requested_cuda_backend() == 'triton'
    backend.set_cuda_backend('cuda')
    try:
        assert backend.requested_cuda_backend() == 'cuda'
    finally:
        backend.set_cuda_backend(None)
    assert backend.requested_cuda_backend() == 'triton'
    monkeypatch.delenv(backend.ENV_VAR)
    assert backend.requested_cuda_backend() == 'auto'


def test_bad_environment_variable_and_setter_values_name_themselves(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, 'gpu')
    with pytest.raises(ValueError, match=f'the environment variable {backend.ENV_VAR} must be one of'):
        backend.requested_cuda_backend()
    with pytest.raises(ValueError, match=r'set_cuda_backend\(name\) must be one of'):
        backend.set_cuda_backend('gpu')


def test_process_state_feeds_the_rule(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    expected = 'triton' if backend.triton_available() else 'cuda'
    assert backend.cuda_backend_for(torch.float32) == expected
    torch.use_deterministic_algorithms(True)
    try:
        assert backend.cuda_backend_for(torch.float32) == 'cuda'
    finally:
        torch.use_deterministic_algorithms(False)
    assert backend.cuda_backend_for(torch.float64) == 'cuda'


def test_cuda_kernels_of_the_public_ops_are_registered_from_python():
    # the C++ CUDA kernels sit under private names; the public ops' CUDA kernels apply the rule
    for op in ('modulated_deform_conv2d', 'modulated_deform_conv2d_backward', 'deform_roi_pool',
               'deform_roi_pool_backward'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'dcn_plugin::{op}', 'CUDA')
