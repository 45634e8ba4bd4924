#!/usr/bin/env python3
"""Build llama.cpp's ``llama-server`` from the sources that ship in llama-cpp-python's sdist.

The server is built from the same llama.cpp the test suite's Python binding was built from
(the installed llama-cpp-python's version, unless ``--version`` says otherwise): CPU only,
Release at -O1 (about half the compile time of -O3), static (one self-contained binary),
only the ``llama-server`` target, no OpenSSL, no web UI (nothing is downloaded while
building), no tests, examples or other tools. It needs cmake (>= 3.14) and a C/C++
compiler; the sdist is fetched with pip (network) unless ``--sdist`` names a local copy.
About 7 minutes on 2 cores (measured: 11.4 CPU-minutes at -O1).

The binary goes to ``.cache/llama-server/VERSION/bin/llama-server`` inside the repository
(git-ignored); a second run finds it there and only prints its path. The sources and the
build tree are deleted afterwards (``--keep-build`` keeps them).

    python tools/build_llama_server.py                 # build (or find) it, print its path
    python tools/build_llama_server.py --sdist llama_cpp_python-0.3.36.tar.gz
    python tools/build_llama_server.py --force -j 8    # rebuild with 8 jobs
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "llama-server")
PACKAGE = "llama-cpp-python"
TARGET = "llama-server"

# CPU only and self-contained: static libraries; GGML_NATIVE=OFF compiles ggml's fixed CPU
# baseline (x86-64: AVX2/FMA/F16C) instead of -march=native, so a copied cache still runs on
# another machine; no HTTPS (OpenSSL); no web UI, whose build step would otherwise try to
# download prebuilt assets from Hugging Face. Release, but at -O1 (--opt-level): the server only
# has to run the test suite's tiny models, and -O1 roughly halves the compile time of -O3.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_BLAS=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",  # tools/server lives under tools/
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_LLGUIDANCE=OFF",
    "-DLLAMA_TOOLS_INSTALL=OFF",
]


def installed_version() -> str | None:
    """Version of the llama-cpp-python installed in this interpreter, or None."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def server_path(version: str) -> str:
    """Where the llama-server built from llama-cpp-python ``version`` lives."""
    return os.path.join(CACHE, version, "bin", TARGET)


def say(msg: str) -> None:
    print(f"build_llama_server: {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def fetch_sdist(version: str, dest: str) -> str:
    """Download llama-cpp-python's sdist (no wheel, no dependencies) with pip into ``dest``."""
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"{PACKAGE}=={version}", "-d", dest])
    found = glob.glob(os.path.join(dest, "llama_cpp_python-*.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"build_llama_server: error: pip left {found!r} in {dest}, expected one sdist")
    return found[0]


def extract_llama_cpp(sdist: str, dest: str) -> str:
    """Extract only ``vendor/llama.cpp`` from the sdist; returns that source directory."""
    with tarfile.open(sdist) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        prefix = f"{top}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise SystemExit(f"build_llama_server: error: {sdist} has no vendor/llama.cpp")
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kw)
    src = os.path.join(dest, top, "vendor", "llama.cpp")
    if not os.path.exists(os.path.join(src, "CMakeLists.txt")):
        raise SystemExit(f"build_llama_server: error: {src} has no CMakeLists.txt")
    return src


def build(version: str, sdist: str | None, jobs: int, keep: bool, opt: str) -> str:
    dst = server_path(version)
    work = os.path.join(CACHE, version, "work")
    shutil.rmtree(work, ignore_errors=True)  # a killed earlier build
    os.makedirs(work)
    t0 = time.monotonic()
    try:
        if sdist is None:
            say(f"downloading the {PACKAGE}=={version} sdist with pip")
            sdist = fetch_sdist(version, work)
        say(f"extracting vendor/llama.cpp from {os.path.basename(sdist)}")
        src = extract_llama_cpp(sdist, os.path.join(work, "src"))
        bdir = os.path.join(work, "build")
        say(f"configuring ({time.monotonic() - t0:.0f} s)")
        flags = f"-O{opt} -DNDEBUG"
        run(["cmake", "-S", src, "-B", bdir, *CMAKE_OPTIONS,
             f"-DCMAKE_C_FLAGS_RELEASE={flags}", f"-DCMAKE_CXX_FLAGS_RELEASE={flags}"])
        say(f"building {TARGET} with {jobs} jobs ({time.monotonic() - t0:.0f} s)")
        run(["cmake", "--build", bdir, "--target", TARGET, "-j", str(jobs)])
        built = os.path.join(bdir, "bin", TARGET)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + ".tmp"
        shutil.copy2(built, tmp)
        run([tmp, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # it runs here
        os.replace(tmp, dst)  # the binary appears whole or not at all
    finally:
        if os.path.exists(dst + ".tmp"):
            os.remove(dst + ".tmp")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    size = os.path.getsize(dst) / 2**20
    say(f"built {TARGET} ({size:.1f} MiB) in {time.monotonic() - t0:.0f} s")
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="build_llama_server.py",
        description="Build llama-server (CPU) from the llama.cpp sources in llama-cpp-python's sdist, "
                    "into .cache/llama-server/VERSION/bin/; prints the binary's path (skips the build "
                    "when it is already there).",
        epilog="examples:\n"
               "  .venv/bin/python tools/build_llama_server.py        # build once, print the path\n"
               "  .cache/llama-server/0.3.36/bin/llama-server -m fixtures/tiny-llama-f32.gguf --port 8080\n"
               "  .venv/bin/python tools/build_llama_server.py --sdist llama_cpp_python-0.3.36.tar.gz  # offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", help=f"{PACKAGE} version whose llama.cpp to build "
                    "(default: the one installed in this interpreter)")
    ap.add_argument("--sdist", help="a local llama_cpp_python-VERSION.tar.gz instead of downloading it")
    ap.add_argument("-j", "--jobs", type=int,
                    default=int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or os.cpu_count() or 1),
                    help="parallel compile jobs (default: $CMAKE_BUILD_PARALLEL_LEVEL or the CPU count)")
    ap.add_argument("--opt-level", default="1", choices=["0", "1", "2", "3", "s"],
                    help="the compiler's -O level (default: 1, about half the build time of llama.cpp's own -O3)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the binary exists")
    ap.add_argument("--keep-build", action="store_true", help="keep the sources and build tree")
    args = ap.parse_args(argv)

    version = args.version or installed_version()
    if version is None:
        ap.error(f"{PACKAGE} is not installed in {sys.executable}; pass --version "
                 "(or install the test extra: pip install -e '.[test]')")
    dst = server_path(version)
    if os.path.exists(dst) and not args.force:
        say(f"{TARGET} for {PACKAGE} {version} already built")
    else:
        if shutil.which("cmake") is None:
            ap.error("cmake is not on PATH (needed to build llama-server)")
        try:
            build(version, args.sdist, max(1, args.jobs), args.keep_build, args.opt_level)
        except subprocess.CalledProcessError as e:
            print(f"build_llama_server: error: {' '.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
            return 1
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
