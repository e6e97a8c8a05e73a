// HTTPS test server (Node.js `https`, keep-alive; OpenSSL is linked into the `node` binary).
// Usage: node https_server.js PORT CERT KEY [--h2] [--echo-port P2]
//   Listens on 127.0.0.1:PORT. Prints `ready` once listening (and the echo listener too).
//   --h2: HTTP/2 over TLS instead (`http2.createSecureServer`, ALPN h2 only).
//   --echo-port P2: also a raw TLS echo listener (`tls.createServer`, not HTTP) on
//   127.0.0.1:P2 in the same process: it sends back whatever it reads.
// Routes: GET /ok -> 200 "ok\n", GET /missing -> 404, GET /fail -> 500, POST /echo -> 201
// echoing the request body (with Content-Length), any other GET -> 200 with the path as the
// body, any other POST -> 404.
"use strict";
const fs = require("fs");
const https = require("https");
const http2 = require("http2");
const tls = require("tls");

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 1) && true : false;
};
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const h2 = flag("--h2");
const echoPort = option("--echo-port");
const port = parseInt(args[0], 10);
if (!(port > 0) || args.length !== 3) {
  console.error("usage: node https_server.js PORT CERT KEY [--h2] [--echo-port P2]");
  process.exit(2);
}
const creds = {
  cert: fs.readFileSync(args[1]),
  key: fs.readFileSync(args[2]),
  minVersion: "TLSv1.3",
};

// Answers (status, body) for a request, given its method, path and body.
function route(method, path, body) {
  if (method === "POST") {
    return path === "/echo" ? [201, body] : [404, Buffer.from("not found\n")];
  }
  if (path === "/ok") return [200, Buffer.from("ok\n")];
  if (path === "/missing") return [404, Buffer.from("not found\n")];
  if (path === "/fail") return [500, Buffer.from("failed\n")];
  return [200, Buffer.from(path + "\n")];
}

function handler(req, res) {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const path = (req.url || "/").split("?")[0];
    const [status, body] = route(req.method, path, Buffer.concat(chunks));
    res.writeHead(status, {
      "content-type": "text/plain",
      "content-length": body.length,
    });
    res.end(body);
  });
  req.on("error", () => {});
}

let server;
if (h2) {
  server = http2.createSecureServer({ ...creds, allowHTTP1: false });
  server.on("request", handler);
  server.on("sessionError", () => {});
} else {
  server = https.createServer({ ...creds, keepAlive: true }, handler);
  server.keepAliveTimeout = 30000;
}
server.on("tlsClientError", () => {});
server.on("clientError", (err, socket) => socket.destroy());
server.on("error", (e) => console.error("server error:", e.message));

let pending = echoPort ? 2 : 1;
const listening = () => {
  if (--pending === 0) console.log("ready");
};
if (echoPort) {
  const echo = tls.createServer(creds, (socket) => {
    socket.on("error", () => {});
    socket.pipe(socket);
  });
  echo.on("tlsClientError", () => {});
  echo.listen(parseInt(echoPort, 10), "127.0.0.1", listening);
}
server.listen(port, "127.0.0.1", listening);
