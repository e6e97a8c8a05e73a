// The Node.js `http` app of bench/sdk_bench.py: GET /ok answers a short body (keep-alive).
// Run bare, or with the OpenTelemetry SDK's zero-code instrumentation:
//   node --require @opentelemetry/auto-instrumentations-node/register node_app.js PORT
// Usage: node node_app.js PORT
const http = require("http");
const port = parseInt(process.argv[2], 10);
http
  .createServer((req, res) => {
    const ok = req.url === "/ok";
    const body = ok ? "ok\n" : "not found\n";
    res.writeHead(ok ? 200 : 404, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(port, "127.0.0.1");
