#!/usr/bin/env python3
"""Benchmark ropepatch's GGUF writes against gguf-py's tools and cp, side by side in one run.

For each model file (SmolLM2-135M Q4_1 from PyPI, plus synthetic multi-GB GGUFs built from
its header with real, non-sparse tensor bytes) and each repetition, it times as separate
processes, interleaved so every tool sees the same machine state:

  cp                     copy of the file (the disk's own limit; not durable)
  cp + sync              the same, flushed to disk as ropepatch's fsync'ed rewrite is
  cp + sync + mv         a durable copy renamed over the file: the like-for-like anchor of a
                         rewrite that replaces the file (it also frees the old file's blocks)
  ropepatch first patch  ntk 16k on a pristine copy: rewrite (kernel copy) + atomic rename
  ropepatch -o copy      patch into a new file (like gguf-new-metadata writes one)
  ropepatch re-patch     a patched file to another ctx: in place
  ropepatch revert       back to the original bytes (rewrite)
  gguf-set-metadata      in-place change of {arch}.rope.freq_base (nearest in-place anchor)
  gguf-new-metadata      full rewrite with a new general.name (nearest rewrite anchor)

Wall time and peak RSS (getrusage of the child) are recorded; the report gives medians,
min-max and the ratios. Page cache is warm for every tool alike.

    python tools/bench_patch.py --sizes 4 --reps 3 --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from get_smollm2 import smollm2_path  # noqa: E402

from ropepatch.formats.gguf.header import read_header, serialize_header  # noqa: E402

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    p = os.path.join(BIN, name)
    return p if os.path.exists(p) else shutil.which(name) or name


def run(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS MiB of that process).

    Peak RSS comes from GNU time when installed (its child starts small), else from wait4,
    whose figure also counts the pages the child inherited from this Python process."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    rss_file = os.path.join(tempfile.gettempdir(), f"ropepatch-bench-{os.getpid()}.rss")
    full = [gnu_time, "-f", "%M", "-o", rss_file, *cmd] if gnu_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}\n{err}")
    if gnu_time:
        with open(rss_file) as f:
            rss_kb = float(f.read().split()[-1])
        os.unlink(rss_file)
        return wall, rss_kb / 1024
    return wall, ru.ru_maxrss / 1024


def make_big(src: str, dst: str, size_gb: float) -> str:
    """``src`` plus one extra I8 tensor of random-ish bytes so the file is ``size_gb`` GB."""
    h = read_header(src)
    extra = int(size_gb * 1e9) - h.file_size
    data_len = h.data_length
    pad_to = -(-data_len // h.alignment) * h.alignment
    name = b"bench.pad.weight"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, extra, 24, pad_to)
    head = serialize_header(h.version, h.kvs, h.tensor_info_raw + info, len(h.tensors) + 1)
    head += bytes(-len(head) % h.alignment)
    block = os.urandom(64 << 20)
    with open(src, "rb") as s, open(dst + ".part", "wb") as d:
        d.write(head)
        s.seek(h.data_offset)
        shutil.copyfileobj(s, d, 16 << 20)
        d.write(bytes(pad_to - data_len))
        left = extra
        while left > 0:
            d.write(block[: min(left, len(block))])
            left -= len(block)
    os.replace(dst + ".part", dst)
    return dst


def make_big_safetensors(dst_dir: str, size_gb: float) -> str:
    """An HF model dir: the tiny llama's config.json + one safetensors file of ``size_gb`` GB
    (one U8 tensor of random-ish bytes; header written by the format's rules)."""
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copyfile(os.path.join(os.path.dirname(HERE), "fixtures", "hf", "tiny-llama", "config.json"),
                    os.path.join(dst_dir, "config.json"))
    n = int(size_gb * 1e9)
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "bench.weight": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path = os.path.join(dst_dir, "model.safetensors")
    block = os.urandom(64 << 20)
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        left = n
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    os.replace(path + ".part", path)
    return dst_dir


# FRESH: on this machine's ext4 the first copy FROM a file that was itself just made by cp is
# 2-3x slower than later copies of it (cp alone: 24.5 s, then 7.5-9.8 s, on 4 GB). ropepatch's
# first patch always runs on such a fresh copy, so its anchor copies a fresh copy too.
# the like-for-like anchor of a rewrite that replaces the file: a durable copy renamed over the
# original, which (unlike cp to a new name) also pays for freeing the old file's blocks
REPLACE = "cp + sync + mv over the file (durable replace)"

NAIVE_SAFETENSORS = (
    "import sys; from safetensors.numpy import load_file, save_file; "
    "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt', 'ropepatch.ctx': '512'})"
)


def bench_safetensors(label: str, pristine_dir: str, work: str, reps: int) -> dict:
    rp = [sys.executable, "-m", "ropepatch"]
    a, c = os.path.join(work, "st-a"), os.path.join(work, "st-c")
    res: dict[str, list[tuple[float, float]]] = {}

    def rec(name, cmd):
        os.sync()
        res.setdefault(name, []).append(run(cmd))

    src = os.path.join(pristine_dir, "model.safetensors")
    for r in range(reps):
        for d in (a, c):
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(c)
        rec("cp", ["cp", src, os.path.join(c, "x.safetensors")])
        rec("cp + sync (durable copy)", ["sh", "-c", f"cp -r '{pristine_dir}' '{a}' && sync '{a}/model.safetensors'"])
        rec("ropepatch hf first patch", rp + ["hf", a, "--ctx", "512"])
        # the anchor replaces a shard made the same way (a fresh copy), see FRESH
        c2 = os.path.join(work, "st-r")
        shutil.rmtree(c2, ignore_errors=True)
        subprocess.run(["cp", "-r", pristine_dir, c2], check=True)
        st_r = os.path.join(c2, "model.safetensors")
        rec(REPLACE, ["sh", "-c", f"cp '{st_r}' '{st_r}.tmp' && sync '{st_r}.tmp' && mv -f '{st_r}.tmp' '{st_r}'"])
        shutil.rmtree(c2)
        rec("ropepatch hf re-patch (in place)", rp + ["hf", a, "--ctx", str(1024 + 128 * r)])
        rec("ropepatch revert", rp + ["revert", a])
        rec("safetensors load_file + save_file (naive rewrite)",
            [sys.executable, "-c", NAIVE_SAFETENSORS, src, os.path.join(c, "y.safetensors")])
    for d in (a, c):
        shutil.rmtree(d, ignore_errors=True)
    return _summarise(label, src, reps, res)


def _summarise(label: str, path: str, reps: int, res: dict) -> dict:
    out = {}
    for name, runs in res.items():
        walls = [w for w, _ in runs]
        out[name] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "peak_rss_mib": max(m for _, m in runs),
        }
    return {"label": label, "size_bytes": os.path.getsize(path), "reps": reps, "ops": out}


def bench_file(label: str, pristine: str, work: str, reps: int) -> dict:
    rp = [sys.executable, "-m", "ropepatch"]
    a, b, c = (os.path.join(work, n) for n in ("a.gguf", "b.gguf", "c.gguf"))
    arch = read_header(pristine).get("general.architecture")
    res: dict[str, list[tuple[float, float]]] = {}

    def rec(name, cmd):
        # flush earlier writes first (untimed), so no run pays for the previous one's writeback
        os.sync()
        res.setdefault(name, []).append(run(cmd))

    for r in range(reps):
        for p in (a, b, c):
            if os.path.exists(p):
                os.unlink(p)
        rec("cp", ["cp", pristine, c])
        rec("cp + sync (durable copy)", ["sh", "-c", f"cp '{pristine}' '{a}' && sync '{a}'"])
        os.unlink(c)
        rec("ropepatch first patch (rewrite)", rp + ["gguf", a, "--ctx", "16384"])
        # the anchor replaces a file made the same way (a fresh copy), see FRESH
        subprocess.run(["cp", pristine, b], check=True)
        rec(REPLACE, ["sh", "-c", f"cp '{b}' '{b}.tmp' && sync '{b}.tmp' && mv -f '{b}.tmp' '{b}'"])
        os.unlink(b)
        rec("ropepatch re-patch (in place)", rp + ["gguf", a, "--ctx", str(32768 + 1024 * r)])
        rec("ropepatch revert (rewrite)", rp + ["revert", a])
        rec("ropepatch -o copy", rp + ["gguf", a, "--ctx", "16384", "-o", c])
        os.unlink(c)
        shutil.copyfile(pristine, b)
        rec("gguf-set-metadata (in place)",
            [tool("gguf-set-metadata"), b, f"{arch}.rope.freq_base", "204522.28", "--force"])
        rec("gguf-new-metadata (rewrite)", [tool("gguf-new-metadata"), b, c, "--general-name", "bench", "--force"])
    for p in (a, b, c):
        if os.path.exists(p):
            os.unlink(p)
    return _summarise(label, pristine, reps, res)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fs = subprocess.run(["stat", "-f", "-c", "%T", "."], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, filesystem {fs}, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def _faster(ratio: float) -> str:
    """``anchor time / ropepatch time`` in words."""
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def markdown(results: list[dict], mach: str) -> str:
    lines = [
        "## Patching speed: ropepatch vs gguf-py tools, safetensors load/save and cp",
        "",
        f"Measured by `python tools/bench_patch.py` on {time.strftime('%Y-%m-%d')}: {mach}.",
        "Every command is a separate process (Python start-up and imports included), all runs",
        "interleaved in one session with a warm page cache and `sync` (untimed) before each; median of",
        "the repetitions, min-max in brackets; peak RSS is the child's maximum resident set. ropepatch's",
        "rewrites fsync the new file before the rename, so `cp + sync` is their like-for-like anchor.",
        "",
    ]
    for r in results:
        ops = r["ops"]
        lines += [f"### {r['label']} ({r['size_bytes'] / 1e9:.2f} GB, {r['reps']} repetitions)", "",
                  "| operation | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
        for name, o in ops.items():
            lines.append(f"| {name} | {o['median_s']:.3f} [{o['min_s']:.3f}-{o['max_s']:.3f}] "
                         f"| {o['peak_rss_mib']:.0f} |")
        m = {k: v["median_s"] for k, v in ops.items()}
        if "ropepatch hf first patch" in m:
            naive = m["safetensors load_file + save_file (naive rewrite)"]
            first, revert = m["ropepatch hf first patch"], m["ropepatch revert"]
            durable_cp = m["cp + sync (durable copy)"]
            lines += [
                "",
                "- re-patch in place vs naive load+save: "
                f"**{naive / m['ropepatch hf re-patch (in place)']:.1f}x faster**",
                f"- first patch (rewrite) vs naive load+save: **{_faster(naive / first)}**",
                f"- first patch / durable cp: {first / durable_cp:.2f}; "
                f"revert / durable cp: {revert / durable_cp:.2f}",
                f"- first patch / durable replace: {first / m[REPLACE]:.2f}; "
                f"revert / durable replace: {revert / m[REPLACE]:.2f}",
                "",
            ]
            continue
        first, new_metadata = m["ropepatch first patch (rewrite)"], m["gguf-new-metadata (rewrite)"]
        revert, durable_cp = m["ropepatch revert (rewrite)"], m["cp + sync (durable copy)"]
        lines += [
            "",
            "- re-patch in place vs gguf-set-metadata: "
            f"**{m['gguf-set-metadata (in place)'] / m['ropepatch re-patch (in place)']:.1f}x faster**",
            f"- first patch (rewrite) vs gguf-new-metadata: **{new_metadata / first:.1f}x faster**;"
            f" `-o` copy: {new_metadata / m['ropepatch -o copy']:.1f}x faster",
            f"- first patch / cp: {first / m['cp']:.2f}; / durable cp: {first / durable_cp:.2f}; "
            f"revert / durable cp: {revert / durable_cp:.2f}",
            f"- first patch / durable replace: {first / m[REPLACE]:.2f}; "
            f"revert / durable replace: {revert / m[REPLACE]:.2f}; "
            f"`-o` copy / durable cp: {m['ropepatch -o copy'] / durable_cp:.2f}",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4", help="synthetic file sizes in GB, comma-separated (default 4; '' for none)")
    ap.add_argument("--st-sizes", default="4", help="synthetic safetensors shard sizes in GB ('' for none)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(os.path.expanduser("~"), ".cache", "ropepatch", "bench"))
    ap.add_argument("--md", help="write the markdown section to this file (replacing it)")
    ap.add_argument("--json", help="write raw results as JSON here")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    smol = smollm2_path()
    files = [("SmolLM2-135M-Instruct Q4_1", smol)]
    for gb in [float(x) for x in args.sizes.split(",") if x.strip()]:
        p = os.path.join(args.dir, f"synthetic-{gb:g}GB.gguf")
        if not os.path.exists(p) or abs(os.path.getsize(p) - gb * 1e9) > 1e6:
            print(f"building {p} ...", file=sys.stderr)
            make_big(smol, p, gb)
        files.append((f"synthetic {gb:g} GB GGUF (SmolLM2 header + random tensor bytes)", p))
    results = []
    for label, path in files:
        print(f"benchmarking {label} ...", file=sys.stderr)
        results.append(bench_file(label, path, args.dir, args.reps))
    for gb in [float(x) for x in args.st_sizes.split(",") if x.strip()]:
        d = os.path.join(args.dir, f"st-{gb:g}GB")
        p = os.path.join(d, "model.safetensors")
        if not os.path.exists(p) or abs(os.path.getsize(p) - gb * 1e9) > 1e6:
            print(f"building {d} ...", file=sys.stderr)
            make_big_safetensors(d, gb)
        label = f"safetensors {gb:g} GB shard (tiny-llama config.json + one random U8 tensor)"
        print(f"benchmarking {label} ...", file=sys.stderr)
        results.append(bench_safetensors(label, d, args.dir, args.reps))
    mach = machine()
    md = markdown(results, mach)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
