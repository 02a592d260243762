#!/usr/bin/env node
// ort_pipeline.js — the ONNX Runtime side of the pipeline load benchmark (bench/pipeline.sh):
// creates one session per model and runs each once on zero inputs, as a server starting a
// multi-model pipeline would, and prints one JSON line of timings.
//
//   node ort_pipeline.js MODEL.onnx... [--mode seq|concurrent|workers] [--threads N]
//
//   seq         InferenceSession.create one after another, then one forward each
//   concurrent  Promise.all of every InferenceSession.create, then Promise.all of the forwards
//               (onnxruntime-node creates and runs on the JS thread inside setImmediate, so
//               this interleaves but does not overlap)
//   workers     one worker_thread per model, each creating its session and running it once:
//               really in parallel (each worker loads the native binding itself)
//
// Printed (ms, on one clock starting just before the first session is created; loading the
// onnxruntime-node module is measured separately as require_ms):
//   ready_ms          every session created
//   ready_and_run_ms  every session created and run once
//   models            per model: create_ms (its own creation), ready_at, run_at (end times)
// Sessions: intraOpNumThreads = interOpNumThreads = --threads (default 1),
// graphOptimizationLevel 'all', sequential execution.
'use strict';

const path = require('path');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

function now() { return Number(process.hrtime.bigint()) / 1e6; }

const t0Require = now();
const ort = require('onnxruntime-node');
const requireMs = now() - t0Require;

function sessionOptions(threads) {
  return {
    intraOpNumThreads: threads,
    interOpNumThreads: threads,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    executionProviders: ['cpu'],
  };
}

// Zero tensors for every input, shaped and typed as the session declares.
function zeroFeeds(session) {
  const feeds = {};
  const types = {
    float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array,
    uint8: Uint8Array, int8: Int8Array, bool: Uint8Array,
  };
  session.inputNames.forEach((name, i) => {
    const md = session.inputMetadata[i];
    if (!md.isTensor || !types[md.type]) throw new Error(`input '${name}': type ${md.type} not handled`);
    const dims = md.shape.map(d => (typeof d === 'number' && d > 0 ? d : 1));
    const n = dims.reduce((a, b) => a * b, 1);
    feeds[name] = new ort.Tensor(md.type, new types[md.type](n), dims);
  });
  return feeds;
}

async function createAndTime(file, threads, t0) {
  const a = now();
  const s = await ort.InferenceSession.create(file, sessionOptions(threads));
  const b = now();
  return { s, create_ms: b - a, ready_at: b - t0 };
}

if (!isMainThread) {
  // A worker: one model, its own session, one forward; reports times on the main clock
  // (hrtime is process-wide, so t0 from the main thread is comparable).
  (async () => {
    const { file, threads, t0 } = workerData;
    const r = await createAndTime(file, threads, t0);
    await r.s.run(zeroFeeds(r.s));
    parentPort.postMessage({ create_ms: r.create_ms, ready_at: r.ready_at, run_at: now() - t0 });
  })().catch(e => { parentPort.postMessage({ error: String(e && e.stack || e) }); });
} else {
  main().catch(e => { console.error(`ort_pipeline.js: ${e && e.stack || e}`); process.exit(1); });
}

async function main() {
  const args = process.argv.slice(2);
  let mode = 'seq', threads = 1;
  const files = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--mode') mode = args[++i];
    else if (args[i] === '--threads') threads = Number(args[++i]);
    else if (args[i].startsWith('-')) throw new Error(`unknown option '${args[i]}'`);
    else files.push(path.resolve(args[i]));
  }
  if (!files.length) throw new Error('usage: ort_pipeline.js MODEL.onnx... [--mode seq|concurrent|workers] [--threads N]');
  if (!['seq', 'concurrent', 'workers'].includes(mode)) throw new Error(`--mode is seq, concurrent or workers; got '${mode}'`);

  const models = files.map(f => ({ name: path.basename(f, '.onnx') }));
  let ready = 0, end = 0;
  const t0 = now();
  if (mode === 'seq') {
    const sessions = [];
    for (let i = 0; i < files.length; i++) {
      const r = await createAndTime(files[i], threads, t0);
      Object.assign(models[i], { create_ms: r.create_ms, ready_at: r.ready_at });
      sessions.push(r.s);
    }
    ready = now() - t0;
    for (let i = 0; i < sessions.length; i++) {
      await sessions[i].run(zeroFeeds(sessions[i]));
      models[i].run_at = now() - t0;
    }
    end = now() - t0;
  } else if (mode === 'concurrent') {
    const rs = await Promise.all(files.map(f => createAndTime(f, threads, t0)));
    ready = now() - t0;
    rs.forEach((r, i) => Object.assign(models[i], { create_ms: r.create_ms, ready_at: r.ready_at }));
    await Promise.all(rs.map(async (r, i) => {
      await r.s.run(zeroFeeds(r.s));
      models[i].run_at = now() - t0;
    }));
    end = now() - t0;
  } else {
    const results = await Promise.all(files.map(file => new Promise((resolve, reject) => {
      const w = new Worker(__filename, { workerData: { file, threads, t0 } });
      w.once('message', m => (m.error ? reject(new Error(m.error)) : resolve(m)));
      w.once('error', reject);
    })));
    results.forEach((r, i) => Object.assign(models[i], r));
    ready = Math.max(...results.map(r => r.ready_at));
    end = Math.max(...results.map(r => r.run_at));
  }
  console.log(JSON.stringify({
    mode, threads, require_ms: requireMs, ready_ms: ready, ready_and_run_ms: end,
    ort_version: ort.env.versions && ort.env.versions.common || null, models,
  }));
  process.exit(0);  // worker threads and the native pools hold the process otherwise
}
