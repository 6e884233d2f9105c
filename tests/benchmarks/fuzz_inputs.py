"""Byte-flip fuzzing of model files through ``load_model`` (not run by the test suite).

Every corrupted file must end in :class:`InputError` (or :class:`TrustRequired`) whose
message names the file, or load cleanly: never any other exception, never a hang. The
suite runs a small seeded sample of this (tests/core/test_fuzz_inputs.py); this script
runs many more:

    PYTHONPATH=. python -m tests.benchmarks.fuzz_inputs --flips 3000 --seed 1

Flips land mostly in the ZIP central directory and end record of archives, where the
audit of issue 17 found the escapes (zlib.error, UnicodeDecodeError, NotImplementedError,
BadZipFile, RuntimeError), and anywhere in ONNX protobufs.
"""

from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

KINDS = ("state_dict", "torchscript", "pt2", "onnx")


def make_samples(folder: Path) -> dict[str, Path]:
    """The tiny test network saved as TorchScript, .pt2 and ONNX, and a squeezenet1_1
    state_dict (a torchvision architecture: the loader rebuilds it from ``LOAD_OPTIONS``)."""
    import torch
    import torchvision

    from tests.core.models import save_all_forms, tiny_net

    model = tiny_net()
    x = torch.randn(1, 3, 32, 32)
    paths = save_all_forms(model, x, folder, "tiny")
    paths["state_dict"] = folder / "squeeze_sd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(num_classes=5).state_dict(), paths["state_dict"])
    return {k: paths[k] for k in KINDS}


# The architecture is named so a state_dict that still reads is rebuilt at once instead of
# being guessed (guessing builds every torchvision model once: minutes on a busy machine).
LOAD_OPTIONS = {"state_dict": {"arch": "squeezenet1_1"}}


def zip_directory_start(data: bytes) -> int:
    """Offset of the ZIP central directory (0 when the bytes are not a ZIP)."""
    eocd = data.rfind(b"PK\x05\x06")
    if not data.startswith(b"PK") or eocd < 0:
        return 0
    return struct.unpack("<I", data[eocd + 16:eocd + 20])[0]


def flipped(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one bit flipped: 80% in the ZIP directory of an archive, else anywhere."""
    start = zip_directory_start(data)
    lo = start if start and rng.random() < 0.8 else 0
    out = bytearray(data)
    pos = rng.randrange(lo, len(out))
    out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def fuzz(samples: dict[str, Path], flips_per_kind: int, seed: int, workdir: Path) -> dict:
    """Load ``flips_per_kind`` corrupted copies of every sample; count how each ended."""
    from quantstudio.core.errors import InputError
    from quantstudio.core.loading import load_model

    rng = random.Random(seed)
    outcomes: collections.Counter = collections.Counter()
    escapes: list[str] = []
    unnamed: list[str] = []
    for kind, src in samples.items():
        data = src.read_bytes()
        for i in range(flips_per_kind):
            target = workdir / f"flip_{kind}_{i}{src.suffix}"
            target.write_bytes(flipped(data, rng))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_model(target, **LOAD_OPTIONS.get(kind, {}))
                outcomes[(kind, "loaded")] += 1
            except InputError as exc:  # TrustRequired is an InputError
                outcomes[(kind, type(exc).__name__)] += 1
                if str(target) not in str(exc):
                    unnamed.append(f"{kind} #{i}: {exc}")
            except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
                outcomes[(kind, "ESCAPED " + type(exc).__name__)] += 1
                escapes.append(f"{kind} #{i}: " + "".join(traceback.format_exception(exc))[-1500:])
            finally:
                target.unlink(missing_ok=True)
    return {"outcomes": outcomes, "escapes": escapes, "unnamed": unnamed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=1000, help="corrupted copies per file kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        samples = make_samples(Path(tmp) / "samples")
        t0 = time.perf_counter()
        result = fuzz(samples, args.flips, args.seed, Path(tmp))
        seconds = time.perf_counter() - t0
    for (kind, outcome), n in sorted(result["outcomes"].items()):
        print(f"{kind:12s} {outcome:24s} {n}")
    for text in result["escapes"][:10]:
        print("\n" + text)
    for text in result["unnamed"][:10]:
        print("message without the file name: " + text)
    total = sum(result["outcomes"].values())
    print(f"\n{total} corrupted files in {seconds:.0f} s: {len(result['escapes'])} escaped, "
          f"{len(result['unnamed'])} messages without the file name")
    return 1 if result["escapes"] or result["unnamed"] else 0


if __name__ == "__main__":
    sys.exit(main())
