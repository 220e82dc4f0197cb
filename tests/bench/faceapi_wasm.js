// face-api's own SSD MobileNetV1 on TensorFlow.js with the wasm backend (the runtime the
// reference outputs came from), timed like patchctl bench --task faces: one 512x512 input,
// batch 1, medians after warm-up. Run by faceapi_wasm.sh, which installs the pinned packages.
//   node faceapi_wasm.js PACKAGE_DIR THREADS ITERS
const path = require('path');
const [pkg, threads, iters] = [process.argv[2], +process.argv[3] || 1, +process.argv[4] || 20];
const faceapi = require(path.join(pkg, 'dist', 'face-api.node-wasm.js'));
const tf = faceapi.tf;
async function main() {
  const wasm = require('@tensorflow/tfjs-backend-wasm');
  wasm.setThreadsCount(threads);
  await tf.setBackend('wasm');
  await tf.ready();
  await faceapi.nets.ssdMobilenetv1.loadFromDisk(path.join(pkg, 'model'));
  const n = 512 * 512 * 3, data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i * 2654435761 % 4294967296) % 255;
  const input = tf.tensor4d(data, [1, 512, 512, 3]);
  const net = faceapi.nets.ssdMobilenetv1;
  const ms = [];
  for (let i = 0; i < iters + 3; i++) {
    const t0 = process.hrtime.bigint();
    const out = net.forwardInput(await faceapi.toNetInput(input));
    const boxes = await out.boxes[0].data(), scores = await out.scores[0].data();
    if (!boxes.length || !scores.length) throw new Error('no output');
    out.boxes.forEach((t) => t.dispose());
    out.scores.forEach((t) => t.dispose());
    if (i >= 3) ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  ms.sort((a, b) => a - b);
  const med = ms.length % 2 ? ms[(ms.length - 1) / 2] : (ms[ms.length / 2 - 1] + ms[ms.length / 2]) / 2;
  console.log(JSON.stringify({ peer: `face-api 1.7.15, tfjs ${tf.version_core} wasm`, task: 'faces',
    size: 512, threads: wasm.getThreadsCount ? wasm.getThreadsCount() : threads, iters,
    ms_median: +med.toFixed(3), ms_p90: +ms[Math.round(0.9 * (ms.length - 1))].toFixed(3) }));
}
main().catch((e) => { console.error(e); process.exit(1); });
