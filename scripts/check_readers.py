"""Read one model's tokenize and extract outputs with pyarrow, polars, pandas
and DuckDB, and check that they agree on the activation matrix.

    python scripts/check_readers.py outputs/test/smollm2-135m-instruct

Prints one "LIBRARY: ok" line per library and exits non-zero on the first
disagreement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main() -> None:
    model = Path(sys.argv[1])
    activations = model / "extract" / "activations"
    tokens = model / "tokenize" / "tokens.parquet"
    layer = 1

    # pyarrow: the Hive folders become a `layer` column.
    table = ds.dataset(activations, format="parquet", partitioning="hive").to_table(
        filter=ds.field("layer") == layer
    )
    reference = np.stack(table.column("hidden").to_numpy(zero_copy_only=False))
    ids = table.column("prompt_id").to_pylist()
    dtype = pq.read_schema(next((activations / f"layer={layer:03d}").glob("*.parquet"))).metadata[b"ihs.dtype"]
    assert dtype == b"f32", dtype
    assert reference.ndim == 2, reference.shape
    assert reference.shape[0] == len(ids), (reference.shape, len(ids))
    assert len(ids) > 0, "the layer has rows"
    print("pyarrow: ok", reference.shape)

    # polars: one layer's folder, and all layers with Hive partitioning.
    frame = pl.read_parquet(activations / f"layer={layer:03d}" / "*.parquet")
    matrix = np.stack(frame["hidden"].to_list()).astype(np.float32)
    assert frame["prompt_id"].to_list() == ids
    np.testing.assert_array_equal(matrix, reference)
    layers = pl.scan_parquet(activations / "**" / "*.parquet", hive_partitioning=True).select("layer").unique().collect()
    assert layers.height > 1, layers
    print("polars: ok", matrix.shape, f"{layers.height} layers")

    # pandas through pyarrow.
    frame = pd.read_parquet(activations / f"layer={layer:03d}")
    assert frame["prompt_id"].tolist() == ids
    np.testing.assert_array_equal(np.stack(frame["hidden"].to_numpy()), reference)
    tokens_frame = pd.read_parquet(tokens)
    assert set(ids) <= set(tokens_frame["prompt_id"]), "every prompt id is in tokens.parquet"
    print("pandas: ok", frame.shape)

    # DuckDB with Hive partitioning.
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT prompt_id, hidden FROM read_parquet('{activations}/*/*.parquet', hive_partitioning = true) "
        f"WHERE layer = {layer} ORDER BY prompt_id"
    ).fetchall()
    by_id = {prompt_id: np.asarray(hidden, dtype=np.float32) for prompt_id, hidden in rows}
    for index, prompt_id in enumerate(ids):
        np.testing.assert_array_equal(by_id[prompt_id], reference[index])
    print("duckdb: ok", len(rows))


if __name__ == "__main__":
    main()
