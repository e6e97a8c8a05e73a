// Test server: Node.js http (keep-alive). Same routes as python_server.py.
// Usage: node node_server.js PORT
const http = require("http");
const port = parseInt(process.argv[2], 10);
const server = http.createServer((req, res) => {
    const send = (code, body) => {
      res.writeHead(code, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
      res.end(body);
    };
    const path = req.url.split("?")[0];
    if (req.method === "POST") {
      let n = 0;
      req.on("data", (c) => (n += c.length));
      req.on("end", () => send(201, `got ${n}\n`));
      return;
    }
    if (path.startsWith("/ok")) send(200, "ok\n");
    else if (path.startsWith("/error")) send(500, "error\n");
    else send(404, "not found\n");
});
// Node closes an idle keep-alive connection after 5 s by default; tests hold one open across
// Sonde's start-up (tests/tests/pairing.rs), which can take longer on a loaded machine.
server.keepAliveTimeout = 120000;
server.listen(port, "127.0.0.1");
