#!/usr/bin/env python3
"""Write the GGUF fixture and reference values for the ihs-gguf dequantization tests.

The fixture `reference.gguf` contains one small tensor per ggml type that ihs-gguf
dequantizes and gguf-py can dequantize, plus metadata entries of every GGUF value
type. For each tensor, `reference/<name>.f32` contains the values that
`gguf.quants.dequantize` computes from the stored bytes, as raw little-endian f32.

Types that gguf-py can quantize get quantized random data. K-quants, which gguf-py
can only dequantize, get random block bytes whose f16 scale fields are overwritten
with finite values, so no NaN or infinity reaches the reference.

Requirements: gguf==0.19.0 and numpy, for example in a virtual environment:

    python3 -m venv /tmp/gguf-venv
    /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python scripts/gguf_reference.py

The output is deterministic for a given numpy and gguf version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

EXPECTED_GGUF_VERSION = "0.19.0"
SEED = 20240611
# A non-default alignment, so the test covers reading general.alignment.
ALIGNMENT = 64

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "crates" / "gguf" / "tests" / "fixtures"

# Tensors quantized from random data: name, type, shape (outermost dimension first).
QUANTIZED = [
    ("f32", T.F32, (2, 3, 4)),
    ("f16", T.F16, (4, 8)),
    ("bf16", T.BF16, (4, 8)),
    ("q4_0", T.Q4_0, (2, 64)),
    ("q4_1", T.Q4_1, (2, 64)),
    ("q5_0", T.Q5_0, (2, 64)),
    ("q5_1", T.Q5_1, (2, 64)),
    ("q8_0", T.Q8_0, (2, 64)),
    ("mxfp4", T.MXFP4, (2, 64)),
]

# Tensors made of random block bytes: name, type, shape, byte offsets of f16 scale
# fields inside each block (layouts of ggml's block_q*_K structs).
RANDOM_BLOCKS = [
    ("q2_k", T.Q2_K, (2, 512), (80, 82)),
    ("q3_k", T.Q3_K, (2, 512), (108,)),
    ("q4_k", T.Q4_K, (2, 512), (0, 2)),
    ("q5_k", T.Q5_K, (2, 512), (0, 2)),
    ("q6_k", T.Q6_K, (2, 512), (208,)),
]


def add_metadata(writer: gguf.GGUFWriter) -> None:
    """Add one scalar and one array of every GGUF value type, and nested arrays."""
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4_000_000_000)
    writer.add_int32("test.i32", -2_000_000_000)
    writer.add_uint64("test.u64", 2**63 + 5)
    writer.add_int64("test.i64", -(2**62))
    writer.add_float32("test.f32", 1.5)
    writer.add_float64("test.f64", -2.25e300)
    writer.add_bool("test.bool", True)
    writer.add_string("test.string", "h\u00e9llo \u2713")

    writer.add_key_value("test.array.u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    writer.add_key_value("test.array.i8", [-128, 0, 127], V.ARRAY, sub_type=V.INT8)
    writer.add_key_value("test.array.u16", [0, 65535], V.ARRAY, sub_type=V.UINT16)
    writer.add_key_value("test.array.i16", [-32768, 32767], V.ARRAY, sub_type=V.INT16)
    writer.add_key_value("test.array.u32", [7, 4_294_967_295], V.ARRAY, sub_type=V.UINT32)
    writer.add_key_value("test.array.i32", [-7, 2_147_483_647], V.ARRAY, sub_type=V.INT32)
    writer.add_key_value("test.array.u64", [2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    writer.add_key_value("test.array.i64", [-(2**63), 3], V.ARRAY, sub_type=V.INT64)
    writer.add_key_value("test.array.f32", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    writer.add_key_value("test.array.f64", [1e-300, 2.5], V.ARRAY, sub_type=V.FLOAT64)
    writer.add_key_value("test.array.bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    writer.add_key_value("test.array.string", ["a", "", "\u00fc"], V.ARRAY, sub_type=V.STRING)
    # Inner lists of Python ints are written as arrays of i32.
    writer.add_key_value("test.array.nested", [[1, 2], [3]], V.ARRAY)
    writer.add_key_value("test.array.nested_string", [["x"], ["y", "z"]], V.ARRAY)


def quantized_tensor(rng: np.random.Generator, qtype: T, shape: tuple[int, ...]) -> np.ndarray:
    """Quantize normally distributed data to `qtype` and return the stored array."""
    data = rng.standard_normal(shape).astype(np.float32)
    return gguf.quants.quantize(data, qtype)


def random_block_tensor(
    rng: np.random.Generator, qtype: T, shape: tuple[int, ...], scale_offsets: tuple[int, ...]
) -> np.ndarray:
    """Return random blocks of `qtype` as uint8 rows, with finite f16 scale fields."""
    block_len, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, row_len = shape
    blocks_per_row = row_len // block_len
    data = rng.integers(0, 256, size=(rows, blocks_per_row, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        scales = rng.uniform(-0.1, 0.1, size=(rows, blocks_per_row)).astype(np.float16)
        data[:, :, offset : offset + 2] = scales.view(np.uint8).reshape(rows, blocks_per_row, 2)
    return data.reshape(rows, blocks_per_row * block_bytes)


def stored_bytes(array: np.ndarray) -> np.ndarray:
    """View the stored tensor as flat little-endian bytes."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)"
    )
    args = parser.parse_args()

    installed = gguf.__version__ if hasattr(gguf, "__version__") else _installed_gguf_version()
    if installed != EXPECTED_GGUF_VERSION:
        raise SystemExit(f"gguf {EXPECTED_GGUF_VERSION} is required, but {installed} is installed")

    out_dir: Path = args.out_dir
    reference_dir = out_dir / "reference"
    reference_dir.mkdir(parents=True, exist_ok=True)
    for old in reference_dir.glob("*.f32"):
        old.unlink()

    rng = np.random.default_rng(SEED)
    tensors: list[tuple[str, T, np.ndarray]] = []
    for name, qtype, shape in QUANTIZED:
        tensors.append((name, qtype, quantized_tensor(rng, qtype, shape)))
    for name, qtype, shape, scale_offsets in RANDOM_BLOCKS:
        tensors.append((name, qtype, random_block_tensor(rng, qtype, shape, scale_offsets)))

    gguf_path = out_dir / "reference.gguf"
    writer = gguf.GGUFWriter(gguf_path, arch="test")
    writer.add_custom_alignment(ALIGNMENT)
    add_metadata(writer)
    for name, qtype, array in tensors:
        # Quantized arrays are uint8 rows of blocks, and the writer derives the element
        # shape from the byte shape and raw_dtype.
        raw_dtype = None if qtype in (T.F32, T.F16) else qtype
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Compute references from the bytes as the file stores them.
    reader = gguf.GGUFReader(gguf_path)
    stored = {tensor.name: tensor for tensor in reader.tensors}
    for name, qtype, array in tensors:
        tensor = stored[name]
        raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
        if raw.tobytes() != stored_bytes(array).tobytes():
            raise SystemExit(f"tensor {name}: the bytes read back differ from the bytes written")
        values = gguf.quants.dequantize(raw.copy(), qtype).astype("<f4", copy=False)
        if not np.all(np.isfinite(values)):
            raise SystemExit(f"tensor {name}: the reference contains NaN or infinity")
        values.reshape(-1).tofile(reference_dir / f"{name}.f32")

    total = gguf_path.stat().st_size + sum(p.stat().st_size for p in reference_dir.glob("*.f32"))
    print(f"wrote {gguf_path} and {len(tensors)} reference files ({total} bytes in all)")


def _installed_gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    main()
