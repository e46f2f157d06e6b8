import numpy as np
import pytest

from cryopipe.backend import get_backend, gpu_available
from cryopipe.errors import InputError


def test_cpu_backend_fft_matches_numpy(rng):
    bk = get_backend("cpu")
    x = rng.standard_normal((3, 16, 16))
    np.testing.assert_allclose(bk.fft.rfft2(x), np.fft.rfft2(x), atol=1e-10)
    assert bk.batch_size(1 << 20) >= 1
    assert "cpu" in bk.describe()


def test_unknown_device_and_missing_gpu_are_input_errors():
    with pytest.raises(InputError, match=r"\[--device\]"):
        get_backend("tpu")
    if not gpu_available():
        with pytest.raises(InputError, match="CuPy sees no CUDA GPU"):
            get_backend("gpu")
        assert get_backend("auto").name == "cpu"


@pytest.mark.gpu
def test_gpu_fft_equals_cpu(gpu, rng):
    x = rng.standard_normal((4, 64, 64)).astype(np.float32)
    ref = np.fft.rfft2(x.astype(np.float64))
    got = gpu.asnumpy(gpu.fft.rfft2(gpu.asarray(x)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    assert get_backend("auto").name == "gpu"


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_asnumpy_pinned_is_a_host_copy(device, rng):
    if device == "gpu" and not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    bk = get_backend(device)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    a = bk.asarray(x)[:, ::2]  # not contiguous
    got = bk.asnumpy_pinned(a)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, x[:, ::2])
