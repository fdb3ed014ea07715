"""Amplitude normalisation: agreement with the released algorithm, its closed forms, and type handling."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medfl.harmofl.amp_norm import (
    AmplitudeAverager,
    AmplitudeNormalize,
    AmplitudeNormalized,
    amplitude_spectrum,
    mean_amplitude,
)

RNG = np.random.default_rng(0)


def released_normalize(img: np.ndarray, amp_trg: np.ndarray, ratio: float) -> np.ndarray:
    """Port of the released ``normalize``/``mutate`` (ALGORITHMS.md §1.2) for one (C, H, W) image."""
    spectrum = np.fft.fft2(img, axes=(-2, -1))
    amp, phase = np.abs(spectrum), np.angle(spectrum)
    amp_src = np.fft.fftshift(amp, axes=(-2, -1))
    amp_dst = np.fft.fftshift(amp_trg, axes=(-2, -1))
    h, w = img.shape[-2:]
    b = math.floor(min(h, w) * ratio)
    ch, cw = h // 2, w // 2
    amp_src[:, ch - b : ch + b + 1, cw - b : cw + b + 1] = amp_dst[:, ch - b : ch + b + 1, cw - b : cw + b + 1]
    amp_new = np.fft.ifftshift(amp_src, axes=(-2, -1))
    return np.real(np.fft.ifft2(amp_new * np.exp(1j * phase), axes=(-2, -1)))


def images(*shape: int, dtype=np.float64) -> np.ndarray:
    return RNG.random(shape).astype(dtype)


@pytest.mark.parametrize("size", [(16, 16), (15, 17), (12, 9), (5, 6)])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.4, 0.5])
def test_matches_released_algorithm(size, ratio):
    x = images(3, 3, *size)
    x[0, 1] = 0.0  # an all-zero channel: DC amplitude 0, phase taken as 0
    reference = np.abs(np.fft.fft2(2 * images(4, 3, *size), axes=(-2, -1))).mean(0)
    out = AmplitudeNormalize(reference, window_ratio=ratio)(x)
    expected = np.stack([released_normalize(img, reference, ratio) for img in x])
    np.testing.assert_allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
def test_own_amplitude_is_identity(ratio):
    x = images(3, 24, 20)
    out = AmplitudeNormalize(amplitude_spectrum(x), window_ratio=ratio)(x)
    np.testing.assert_allclose(out, x, atol=1e-12)


def test_dc_window_is_per_channel_mean_matching():
    x = images(2, 3, 16, 12)
    reference = amplitude_spectrum(3 * images(5, 3, 16, 12)).mean(0).numpy()
    out = AmplitudeNormalize(reference, mode="reference_code")(x)
    target_mean = reference[:, 0, 0] / (16 * 12)
    expected = x - x.mean(axis=(-2, -1), keepdims=True) + target_mean[:, None, None]
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_phase_is_kept():
    x = images(3, 16, 16)
    reference = amplitude_spectrum(images(4, 3, 16, 16)).mean(0)
    out = AmplitudeNormalize(reference, window_ratio=0.2)(x)
    spec_in, spec_out = np.fft.fft2(x), np.fft.fft2(out)
    nonzero = (np.abs(spec_in) > 1e-9) & (np.abs(spec_out) > 1e-9)
    phase_change = np.exp(1j * (np.angle(spec_out) - np.angle(spec_in)))
    np.testing.assert_allclose(phase_change[nonzero], 1.0, atol=1e-9)
    assert not np.allclose(np.abs(spec_in), np.abs(spec_out))  # the amplitude did change


def test_dictionary_form_equals_array_form():
    x, label = images(3, 16, 16), np.ones((1, 16, 16))
    reference = amplitude_spectrum(images(4, 3, 16, 16)).mean(0)
    out = AmplitudeNormalized(keys=["image", "other"], reference=reference, allow_missing_keys=True)(
        {"image": x, "label": label}
    )
    np.testing.assert_array_equal(out["image"], AmplitudeNormalize(reference)(x))
    assert out["label"] is label
    with pytest.raises(KeyError):
        AmplitudeNormalized(keys="other", reference=reference)({"image": x})


def test_numpy_and_torch_give_the_same_result():
    x = images(2, 3, 32, 32, dtype=np.float32)
    reference = amplitude_spectrum(images(4, 3, 32, 32)).mean(0)
    transform = AmplitudeNormalize(reference)
    out_np, out_torch = transform(x), transform(torch.from_numpy(x))
    assert isinstance(out_np, np.ndarray) and isinstance(out_torch, torch.Tensor)
    np.testing.assert_allclose(out_np, out_torch.numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "reference_code"])
def test_batch_equals_per_image(mode):
    x = torch.from_numpy(images(4, 3, 20, 24))
    transform = AmplitudeNormalize(amplitude_spectrum(images(4, 3, 20, 24)).mean(0), mode=mode)
    torch.testing.assert_close(transform(x), torch.stack([transform(img) for img in x]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_dtype_and_shape_are_kept(dtype):
    x = torch.rand(2, 3, 16, 16).to(dtype)
    out = AmplitudeNormalize(amplitude_spectrum(torch.rand(4, 3, 16, 16)).mean(0))(x)
    assert out.dtype == dtype and out.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_dtype_and_shape_are_kept(dtype):
    x = images(3, 16, 16, dtype=dtype)
    out = AmplitudeNormalize(amplitude_spectrum(images(4, 3, 16, 16)).mean(0))(x)
    assert out.dtype == dtype and out.shape == x.shape


def test_meta_tensor_keeps_its_metadata():
    x = MetaTensor(torch.rand(3, 16, 16), meta={"filename_or_obj": "site1/case0.nii.gz"})
    out = AmplitudeNormalize(amplitude_spectrum(torch.rand(4, 3, 16, 16)).mean(0))(x)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "site1/case0.nii.gz"


@pytest.mark.parametrize("ratio", [0.0, 0.2])
def test_3d_own_amplitude_is_identity_and_dc_matches_means(ratio):
    x = images(2, 8, 10, 6)
    np.testing.assert_allclose(AmplitudeNormalize(amplitude_spectrum(x, 3), window_ratio=ratio)(x), x, atol=1e-12)
    reference = amplitude_spectrum(2 * images(3, 2, 8, 10, 6), 3).mean(0)
    batch = np.stack([x, 0.5 * x])
    out = AmplitudeNormalize(reference, window_ratio=0.0)(batch)
    np.testing.assert_allclose(out.mean(axis=(-3, -2, -1)), np.broadcast_to(reference[:, 0, 0, 0] / 480, (2, 2)))


def test_assigning_a_new_reference():
    x = images(3, 16, 16)
    transform = AmplitudeNormalize(amplitude_spectrum(images(3, 16, 16)))
    transform.reference = amplitude_spectrum(x)
    np.testing.assert_allclose(transform(x), x, atol=1e-12)


def test_invalid_inputs_name_the_problem():
    reference = amplitude_spectrum(images(3, 16, 16))
    transform = AmplitudeNormalize(reference)
    with pytest.raises(TypeError, match="floating-point"):
        transform(np.zeros((3, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="does not match the reference"):
        transform(images(1, 16, 16))
    with pytest.raises(ValueError, match="does not match the reference"):
        transform(images(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="window_ratio"):
        AmplitudeNormalize(reference, window_ratio=0.6)
    with pytest.raises(ValueError, match="unknown amplitude-normalisation mode"):
        AmplitudeNormalize(reference, mode="faithful")
    with pytest.raises(ValueError, match="non-negative"):
        AmplitudeNormalize(-reference)
    with pytest.raises(ValueError, match="spatial_dims"):
        AmplitudeNormalize(reference[0])


def test_mode_defaults():
    reference = amplitude_spectrum(images(3, 16, 16))
    assert AmplitudeNormalize(reference).window_ratio == 0.1
    assert AmplitudeNormalize(reference, mode="reference_code").window_ratio == 0.0
    assert AmplitudeNormalize(reference, mode="reference_code", window_ratio=0.2).window_ratio == 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    x = torch.rand(4, 3, 64, 64)
    transform = AmplitudeNormalize(amplitude_spectrum(torch.rand(4, 3, 64, 64)).mean(0))
    out = transform(x.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), transform(x), atol=1e-5, rtol=1e-5)


def test_reference_code_amplitude_is_the_first_batch_mean():
    batches = [torch.rand(4, 3, 8, 8) for _ in range(3)]
    first = torch.fft.fft2(batches[0]).abs().mean(0)
    torch.testing.assert_close(mean_amplitude(batches, mode="reference_code"), first)
    torch.testing.assert_close(mean_amplitude(batches[0]), first)


def test_paper_amplitude_is_an_ema_over_batches():
    batches = [{"image": torch.rand(2, 3, 8, 8)} for _ in range(3)]
    a1, a2, a3 = (torch.fft.fft2(b["image"]).abs().mean(0) for b in batches)
    expected = 0.9 * (0.9 * a1 + 0.1 * a2) + 0.1 * a3
    torch.testing.assert_close(mean_amplitude(batches, mode="paper", key="image"), expected)


def test_averager_rejects_bad_batches():
    averager = AmplitudeAverager()
    with pytest.raises(RuntimeError, match="no batch"):
        averager.value
    with pytest.raises(ValueError, match="expected a batch"):
        averager.update(torch.rand(3, 8, 8))
    averager.update(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="differs"):
        averager.update(torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError, match="momentum"):
        AmplitudeAverager(momentum=1.5)


def test_prostate_slices_take_the_reference_means(shared_data):
    """Real MRI: 2.5-D slices (3 neighbouring slices as channels) of one site normalised to another's."""
    volume = nib.load(shared_data / "prostate_promise12" / "Case00.nii.gz").get_fdata(dtype=np.float32)
    volume = 255 * volume / np.percentile(volume, 99).clip(min=1e-6)
    slices = np.stack([np.moveaxis(volume[..., i - 1 : i + 2], -1, 0) for i in range(20, 36)])  # (16, 3, 128, 128)
    other_site = 0.5 * slices[:8] + 40.0  # a darker, offset "scanner"
    reference = mean_amplitude(other_site, mode="reference_code")
    out = AmplitudeNormalize(reference, mode="reference_code")(slices[8:])
    target_means = np.broadcast_to(other_site.mean(axis=(0, -2, -1)), (8, 3))
    np.testing.assert_allclose(out.mean(axis=(-2, -1)), target_means, rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=(-2, -1)), slices[8:].std(axis=(-2, -1)), rtol=1e-4)
