#!/usr/bin/python3
"""make_corpus.py KILN_CLI OUTDIR — seed corpora for kiln's fuzz targets, from real files:

    OUTDIR/artifact/  .kiln files traced (by KILN_CLI) from tests/trace/make_trace_models.py's
                      models and tests/reliability_models.py's attention layer, with every
                      combination of the lazy/async flags
    OUTDIR/onnx/      those models' .onnx files and the ONNX backend node tests' model.onnx
                      (Debian's libonnx-testdata, when installed)
    OUTDIR/npy/       their .npy inputs/outputs and .npy files of every dtype, byte order
                      marker, format version (1.0, 2.0, 3.0), rank (0 to 8), empty arrays and
                      Fortran order

Needs python3-onnx and numpy: run it with /usr/bin/python3. Existing files are replaced.
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
tests = os.path.join(os.path.dirname(here), "tests")
cli, out = sys.argv[1], sys.argv[2]
models = os.path.join(out, "models")
dirs = {k: os.path.join(out, k) for k in ("artifact", "onnx", "npy")}
for d in dirs.values():
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)

subprocess.run([sys.executable, os.path.join(tests, "trace", "make_trace_models.py"), models], check=True)
subprocess.run([sys.executable, os.path.join(tests, "reliability_models.py"), models], check=True)

# Artifacts: every model that traces, with each flag combination.
shapes = {"fold": ["--shape", "x=2x3x4"]}
n_art = 0
for onnx_path in sorted(glob.glob(os.path.join(models, "*.onnx"))):
    name = os.path.basename(onnx_path)[:-5]
    shutil.copy(onnx_path, os.path.join(dirs["onnx"], name + ".onnx"))
    for flags in ([], ["--lazy"], ["--async"], ["--lazy", "--async"]):
        tag = "".join(f[2] for f in flags)
        dst = os.path.join(dirs["artifact"], "%s%s.kiln" % (name, "-" + tag if tag else ""))
        r = subprocess.run([cli, "trace", onnx_path, "-o", dst] + shapes.get(name, []) + flags,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n_art += r.returncode == 0

# ONNX: the node tests' models.
n_node = 0
for p in sorted(glob.glob("/usr/share/libonnx-testdata/data/node/*/model.onnx")):
    shutil.copy(p, os.path.join(dirs["onnx"], os.path.basename(os.path.dirname(p)) + ".onnx"))
    n_node += 1

# .npy: the models' files, then one per dtype / version / layout.
for p in glob.glob(os.path.join(models, "*.npy")):
    if os.path.getsize(p) <= 1 << 16:
        shutil.copy(p, os.path.join(dirs["npy"], os.path.basename(p)))
rng = np.random.default_rng(1)
arrays = {
    "f4": rng.standard_normal((2, 3), dtype=np.float32), "f8": rng.standard_normal(5),
    "f2": rng.standard_normal((3, 2)).astype(np.float16), "i1": np.arange(-4, 4, dtype=np.int8),
    "u1": np.arange(7, dtype=np.uint8), "i4": np.arange(6, dtype=np.int32).reshape(2, 3),
    "i8": np.arange(4, dtype=np.int64), "b1": np.array([True, False, True]),
    "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32),
    "rank8": np.ones((1, 2, 1, 2, 1, 2, 1, 2), np.float32),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "fortran3": np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
    "bigendian": np.arange(3, dtype=">f4"), "u4": np.arange(3, dtype=np.uint32),
}
for name, a in arrays.items():
    np.save(os.path.join(dirs["npy"], name + ".npy"), a)
    for version in ((2, 0), (3, 0)):
        with open(os.path.join(dirs["npy"], "%s-v%d.npy" % (name, version[0])), "wb") as f:
            np.lib.format.write_array(f, a, version=version)

print("corpus: %d artifacts, %d onnx (%d node tests), %d npy" % (
    n_art, len(os.listdir(dirs["onnx"])), n_node, len(os.listdir(dirs["npy"]))))
