#!/usr/bin/env python3
"""Execute a notebook headless with nbclient and fail when a cell raises.

Usage:
    .venv/bin/python scripts/run_notebook.py [NOTEBOOK] [--outputs DIR] [--save PATH]

NOTEBOOK defaults to notebooks/probe-accuracy.ipynb. The notebook runs with
the repository root as its working directory, with IHS_OUTPUTS set to
--outputs when given, and talks to its kernel over Unix sockets in a
temporary folder rather than TCP. Figures are kept as PNG outputs (the
kernel's inline backend). Needs the packages
in scripts/requirements-test.txt (nbclient, nbformat, ipykernel, matplotlib,
polars).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = ROOT / "notebooks" / "probe-accuracy.ipynb"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=DEFAULT_NOTEBOOK, help="notebook to execute")
    parser.add_argument("--outputs", type=Path, help="experiment output folder, passed as IHS_OUTPUTS")
    parser.add_argument("--save", type=Path, help="write the executed notebook, with its outputs, to this path")
    parser.add_argument("--timeout", type=int, default=300, help="time limit per cell, in seconds (default 300)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.outputs is not None:
        # The kernel inherits this process's environment.
        os.environ["IHS_OUTPUTS"] = str(args.outputs.resolve())

    notebook = nbformat.read(args.notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="ihs-kernel-") as sockets:
        kernel = KernelManager(kernel_name=args.kernel, transport="ipc", ip=str(Path(sockets) / "kernel"))
        client = NotebookClient(
            notebook,
            km=kernel,
            timeout=args.timeout,
            resources={"metadata": {"path": str(ROOT)}},
        )
        try:
            client.execute()
        except CellExecutionError as error:
            print(f"{args.notebook}: a cell failed:\n{error}", file=sys.stderr)
            return 1
        finally:
            if args.save is not None:
                nbformat.write(notebook, args.save)

    images = sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    )
    print(f"{args.notebook}: executed {len(notebook.cells)} cells, {images} figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
