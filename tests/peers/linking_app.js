// Peer for Sonde's in-process linking test: a Node.js front (one event loop serving every
// request). GET /req/<id> calls GET /down/<id> on the downstream (http.get, no keep-alive),
// then answers `done <id>`. Usage: node linking_app.js PORT DOWN_PORT. Prints `ready`.
const http = require('http');
const [port, down] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: false });
http.createServer((req, res) => {
  const id = req.url.split('/').pop();
  http.get({ host: '127.0.0.1', port: down, path: '/down/' + id, agent }, (r) => {
    r.resume();
    r.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('done ' + id);
    });
  }).on('error', () => { res.writeHead(502); res.end(); });
}).listen(port, '127.0.0.1', () => console.log('ready'));
