// HTTP/2 test server (Node.js `http2`).
// Usage: node h2_server.js PORT [--tls CERT KEY]
//   Without --tls: h2c (HTTP/2 with prior knowledge on cleartext) on 127.0.0.1:PORT.
//   With --tls: h2 over TLS (ALPN h2 only).
// Routes: /ok -> 200 "ok", /missing -> 404, /fail -> 500, POST /echo -> 200 echoing the
// body, anything else -> 200 with the path echoed. Prints `ready` once listening.
"use strict";
const http2 = require("http2");
const fs = require("fs");

const args = process.argv.slice(2);
const port = parseInt(args[0], 10);
if (!(port > 0)) {
  console.error("usage: node h2_server.js PORT [--tls CERT KEY]");
  process.exit(2);
}
const tlsAt = args.indexOf("--tls");

function handle(stream, headers) {
  const method = headers[":method"];
  const path = (headers[":path"] || "/").split("?")[0];
  const send = (status, body) => {
    stream.respond({
      ":status": status,
      "content-type": "text/plain",
      "content-length": Buffer.byteLength(body),
    });
    stream.end(body);
  };
  stream.on("error", () => {});
  if (method === "POST" && path === "/echo") {
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => send(200, Buffer.concat(chunks)));
    return;
  }
  // Drain any request body before answering.
  stream.resume();
  if (path === "/ok") send(200, "ok");
  else if (path === "/missing") send(404, "not found");
  else if (path === "/fail") send(500, "failed");
  else send(200, path);
}

const server =
  tlsAt >= 0
    ? http2.createSecureServer({
        cert: fs.readFileSync(args[tlsAt + 1]),
        key: fs.readFileSync(args[tlsAt + 2]),
        allowHTTP1: false,
      })
    : http2.createServer();
server.on("stream", handle);
// Hostile clients (garbage, bad frames) must not take the server down.
server.on("sessionError", () => {});
server.on("error", (e) => console.error("server error:", e.message));
server.listen(port, "127.0.0.1", () => console.log("ready"));
