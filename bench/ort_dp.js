// ort_dp.js MODEL.onnx B ITERS THREADS — ONNX Runtime's throughput at batch B with THREADS
// intra-op threads (the data-parallel benchmark's peer). Prints one JSON line.
'use strict';
const ort = require('onnxruntime-node');
const [model, B, iters, threads] = [process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5]];
(async () => {
  const s = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const name = s.inputNames[0];
  const isBert = model.includes('bert');
  const shape = isBert ? [B, 64] : [B, 3, 224, 224];
  const n = shape.reduce((a, b) => a * b, 1);
  const t = isBert ? new ort.Tensor('int64', BigInt64Array.from({ length: n }, (_, i) => BigInt(i * 7 % 100)), shape)
                   : new ort.Tensor('float32', Float32Array.from({ length: n }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5), shape);
  for (let w = 0; w < 3; w++) await s.run({ [name]: t });
  const times = [];
  for (let i = 0; i < iters; i++) {
    const a = process.hrtime.bigint();
    await s.run({ [name]: t });
    times.push(Number(process.hrtime.bigint() - a) / 1e6);
  }
  times.sort((a, b) => a - b);
  const med = times[Math.floor(iters / 2)];
  console.log(JSON.stringify({ model, batch: B, threads, ms: +med.toFixed(3), per_s: +(B * 1000 / med).toFixed(1) }));
})();
