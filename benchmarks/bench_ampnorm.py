"""Throughput of HarmoFL amplitude normalisation: batched ``AmplitudeNormalize`` vs per-image numpy.

The baseline is the straightforward implementation of the released algorithm, one image at a time:
``np.fft.fft2`` -> amplitude and phase -> ``fftshift`` -> replace the low-frequency window -> ``ifftshift`` ->
``ifft2`` of amplitude * exp(i phase). Both run on the same random float32 images, on the CPU unless
``--device`` says otherwise; each is timed ``--repeats`` times, interleaved, and the best run counts
(the machine may be shared). The last line printed is the speed-up ratio (goal: >= 10x).

    python benchmarks/bench_ampnorm.py [--n 128] [--batch 16] [--repeats 3] [--mode paper|reference_code]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from medfl.harmofl.amp_norm import AMPLITUDE_MODES, AmplitudeNormalize, mean_amplitude


def numpy_amplitude_normalize(image: np.ndarray, reference: np.ndarray, window_ratio: float) -> np.ndarray:
    """One (C, H, W) image, the released way."""
    spectrum = np.fft.fft2(image, axes=(-2, -1))
    amplitude = np.fft.fftshift(np.abs(spectrum), axes=(-2, -1))
    target = np.fft.fftshift(reference, axes=(-2, -1))
    h, w = image.shape[-2:]
    b = math.floor(min(h, w) * window_ratio)
    window = (slice(None), slice(h // 2 - b, h // 2 + b + 1), slice(w // 2 - b, w // 2 + b + 1))
    amplitude[window] = target[window]
    amplitude = np.fft.ifftshift(amplitude, axes=(-2, -1))
    return np.real(np.fft.ifft2(amplitude * np.exp(1j * np.angle(spectrum)), axes=(-2, -1))).astype(image.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="number of images (default 128)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the torch transform (default 16)")
    parser.add_argument("--size", type=int, default=384, help="image height and width (default 384)")
    parser.add_argument("--channels", type=int, default=3, help="image channels (default 3)")
    parser.add_argument("--mode", choices=sorted(AMPLITUDE_MODES), default="paper", help="window and reference mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device of the transform (default cpu)")
    args = parser.parse_args()

    images = np.random.default_rng(0).random((args.n, args.channels, args.size, args.size), dtype=np.float32)
    reference = mean_amplitude(images[: args.batch], mode=args.mode)
    transform = AmplitudeNormalize(reference, mode=args.mode)
    batches = [torch.from_numpy(images[i : i + args.batch]).to(args.device) for i in range(0, args.n, args.batch)]
    reference_np = reference.numpy()

    def run_torch() -> list[torch.Tensor]:
        outputs = [transform(batch) for batch in batches]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return outputs

    def run_numpy() -> list[np.ndarray]:
        return [numpy_amplitude_normalize(image, reference_np, transform.window_ratio) for image in images]

    transform(batches[0])  # warm-up (FFT plans, allocations)
    numpy_amplitude_normalize(images[0], reference_np, transform.window_ratio)
    torch_seconds, numpy_seconds = [], []
    for _ in range(args.repeats):  # interleaved, best of each: robust to other load on the machine
        start = time.perf_counter()
        outputs = run_torch()
        torch_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        baseline = run_numpy()
        numpy_seconds.append(time.perf_counter() - start)
    torch_rate, numpy_rate = args.n / min(torch_seconds), args.n / min(numpy_seconds)

    max_diff = max(
        float(np.abs(out.cpu().numpy() - np.stack(baseline[i * args.batch : (i + 1) * args.batch])).max())
        for i, out in enumerate(outputs)
    )
    print(
        f"images: {args.n} x {args.channels}x{args.size}x{args.size} float32, mode {args.mode!r}, window_ratio "
        f"{transform.window_ratio}, torch threads {torch.get_num_threads()}, device {args.device}, "
        f"best of {args.repeats}"
    )
    print(f"AmplitudeNormalize (batch {args.batch}): {torch_rate:8.1f} images/s")
    print(f"numpy per image:                 {numpy_rate:8.1f} images/s")
    print(f"max |difference|: {max_diff:.2e}")
    print(f"ratio: {torch_rate / numpy_rate:.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
