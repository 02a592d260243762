#!/usr/bin/env node
// ort_bench.js — the ONNX Runtime side of kiln's benchmark (onnxruntime-node, CPU EP).
//
//   node ort_bench.js MODELDIR NAME --first [--threads N]
//   node ort_bench.js MODELDIR NAME [--sessions N] [--cold-sessions N] [--evict CMD]
//                                   [--runs N] [--warmup N] [--threads N] [--budget S]
//
// Reads MODELDIR/NAME.{onnx,json,input_0.npy,output_0.npy} (written by
// tests/models/export_models.py) and prints one JSON line. Always:
//   require_ms       loading the onnxruntime-node module (native library included; not
//                    part of any figure below)
//   rss_before_kb    resident memory after require and reading the inputs
//   first_session_ms the first InferenceSession.create in this process (from the .onnx path)
//   first_forward_ms its first run; ttfi_ms the two together
//   maxrss_kb        peak resident memory (getrusage) after that first run
//   rel_err          max|ort - torch| / max|torch| on the exported input
// --first stops there (the fresh-process measurement; the caller sets the page cache).
// Otherwise, in this warm process (medians / bests):
//   session_ms       --sessions (10) further creations, warm page cache
//   cold_session_ms  --cold-sessions (3) creations, each after `CMD --evict NAME.onnx`
//                    (bench_kiln's page-cache tool) dropped the file from the page cache
//   forward_ms       --runs (50) runs after --warmup (5)
// --budget S stops the forward and warm-session loops early once they have 5 samples and
// have taken S seconds each (default: no limit); "n" says how many ran.
// Sessions use intraOpNumThreads = --threads (default 1), interOpNumThreads = 1,
// graphOptimizationLevel 'all', sequential execution.
'use strict';

const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const t0 = process.hrtime.bigint();
const ort = require('onnxruntime-node');
const requireMs = Number(process.hrtime.bigint() - t0) / 1e6;

function now() { return Number(process.hrtime.bigint()) / 1e6; }

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function stat(xs) {
  return { median: median(xs), best: Math.min(...xs), n: xs.length };
}

// Minimal .npy reader: little-endian f4/f8/i4/i8/u1/b1, C order, format 1.x-3.x.
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf[0] !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY')
    throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`${file}: bad .npy header`);
  if (fortran[1] === 'True') throw new Error(`${file}: Fortran order not supported`);
  const dims = shape[1].split(',').map(s => s.trim()).filter(s => s.length).map(Number);
  const types = {
    '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array],
    '<i4': ['int32', Int32Array], '<i8': ['int64', BigInt64Array],
    '|u1': ['uint8', Uint8Array], '|b1': ['bool', Uint8Array],
  };
  const t = types[descr[1]];
  if (!t) throw new Error(`${file}: dtype ${descr[1]} not supported`);
  const count = dims.reduce((a, b) => a * b, 1);
  const off = hstart + hlen;
  const bytes = buf.subarray(off, off + count * t[1].BYTES_PER_ELEMENT);
  if (bytes.length !== count * t[1].BYTES_PER_ELEMENT) throw new Error(`${file}: truncated`);
  const data = new t[1](count);
  Buffer.from(data.buffer).set(bytes);  // copy: the file buffer may be unaligned
  return { dtype: t[0], dims, data };
}

function relErr(got, ref) {
  let maxDiff = 0, maxRef = 0;
  if (got.length !== ref.length) return Infinity;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    if (!(d <= maxDiff)) maxDiff = d;  // NaN propagates as a failure
    const r = Math.abs(ref[i]);
    if (r > maxRef) maxRef = r;
  }
  return maxRef > 0 ? maxDiff / maxRef : maxDiff;
}

async function main() {
  const args = process.argv.slice(2);
  const opt = { runs: 50, warmup: 5, sessions: 10, coldSessions: 3, threads: 1, first: false,
                evict: null, budget: 0 };
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--runs') opt.runs = Number(args[++i]);
    else if (args[i] === '--warmup') opt.warmup = Number(args[++i]);
    else if (args[i] === '--sessions') opt.sessions = Number(args[++i]);
    else if (args[i] === '--cold-sessions') opt.coldSessions = Number(args[++i]);
    else if (args[i] === '--evict') opt.evict = args[++i];
    else if (args[i] === '--threads') opt.threads = Number(args[++i]);
    else if (args[i] === '--budget') opt.budget = Number(args[++i]);
    else if (args[i] === '--first' || args[i] === '--first-only') opt.first = true;
    else pos.push(args[i]);
  }
  if (pos.length !== 2 || !(opt.runs >= 1) || !(opt.sessions >= 1) || !(opt.threads >= 1)) {
    console.error('usage: node ort_bench.js MODELDIR NAME [--first] [--sessions N] ' +
                  '[--cold-sessions N] [--evict CMD] [--runs N] [--warmup N] [--threads N] [--budget S]');
    process.exit(2);
  }
  if (!opt.evict) opt.coldSessions = 0;
  const [dir, name] = pos;
  const meta = JSON.parse(fs.readFileSync(path.join(dir, name + '.json'), 'utf8'));
  const onnxPath = path.join(dir, name + '.onnx');
  const so = {
    executionProviders: ['cpu'],
    intraOpNumThreads: opt.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  };

  const feeds = {};
  for (const inp of meta.inputs) {
    const a = readNpy(path.join(dir, inp.file));
    feeds[inp.name] = new ort.Tensor(a.dtype, a.data, a.dims);
  }
  const ref = readNpy(path.join(dir, meta.outputs[0].file));
  const outName = meta.outputs[0].name;
  const rssBefore = Math.round(process.memoryUsage.rss() / 1024);

  let t = now();
  let sess = await ort.InferenceSession.create(onnxPath, so);
  const firstSessionMs = now() - t;
  t = now();
  let out = await sess.run(feeds);
  const firstForwardMs = now() - t;
  const maxrss = process.resourceUsage().maxRSS;
  const err = relErr(out[outName].data, ref.data);
  const res = {
    model: name, ort_version: ort.env.versions.common, threads: opt.threads,
    require_ms: requireMs, rss_before_kb: rssBefore, first_session_ms: firstSessionMs,
    first_forward_ms: firstForwardMs, ttfi_ms: firstSessionMs + firstForwardMs,
    maxrss_kb: maxrss, rel_err: err,
  };
  if (!opt.first) {
    for (let i = 0; i < opt.warmup; i++) out = await sess.run(feeds);
    const overBudget = (xs, t0) => xs.length >= 5 && opt.budget > 0 && now() - t0 > opt.budget * 1e3;
    const fwdMs = [];
    let tLoop = now();
    for (let i = 0; i < opt.runs && !overBudget(fwdMs, tLoop); i++) {
      t = now();
      out = await sess.run(feeds);
      fwdMs.push(now() - t);
    }
    res.forward_ms = stat(fwdMs);
    res.rel_err = Math.max(err, relErr(out[outName].data, ref.data));
    await sess.release();
    sess = null;
    const sessMs = [];
    tLoop = now();
    for (let i = 0; i < opt.sessions && !overBudget(sessMs, tLoop); i++) {
      t = now();
      sess = await ort.InferenceSession.create(onnxPath, so);
      sessMs.push(now() - t);
      await sess.release();
      sess = null;
    }
    res.session_ms = stat(sessMs);
    const coldMs = [];
    let maxResident = 0, pages = 0;
    for (let i = 0; i < opt.coldSessions; i++) {
      const ev = JSON.parse(execFileSync(opt.evict, ['--evict', onnxPath]).toString());
      pages = ev.files[0].pages;
      maxResident = Math.max(maxResident, ev.files[0].resident < 0 ? pages : ev.files[0].resident);
      t = now();
      sess = await ort.InferenceSession.create(onnxPath, so);
      coldMs.push(now() - t);
      await sess.release();
      sess = null;
    }
    if (coldMs.length) {
      res.cold_session_ms = stat(coldMs);
      res.cold_evict = { method: 'posix_fadvise', pages, max_resident: maxResident };
    }
  }
  if (sess) await sess.release();
  console.log(JSON.stringify(res));
}

main().catch(e => { console.error(`ort_bench: ${e.message || e}`); process.exit(1); });
