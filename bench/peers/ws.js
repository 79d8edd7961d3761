// Node `ws` peer for ringcast-bench: the roadrunner join protocol on /ws;
// publications as WebSocket messages on /pub (pipelined, its fastest path) or
// POST /publish on the same port; the idiomatic broadcast loop over a Set of
// subscribers per topic, encoding once per publication. One thread.
// Usage: node bench/peers/ws.js PORT
const http = require('http');
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2] || 9102);
const topics = new Map();
const publish = (body) => {
  for (const t of body.topics) {
    const frame = JSON.stringify({ topic: t, payload: body.payload });
    for (const ws of topics.get(t) || []) ws.send(frame);
  }
};

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') { res.writeHead(404); res.end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    publish(JSON.parse(Buffer.concat(chunks).toString()));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
  });
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const publishers = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024 });
server.on('upgrade', (req, socket, head) => {
  const to = req.url === '/ws' ? wss : req.url === '/pub' ? publishers : null;
  if (!to) { socket.destroy(); return; }
  to.handleUpgrade(req, socket, head, (ws) => to.emit('connection', ws, req));
});
publishers.on('connection', (ws) => ws.on('message', (data) => publish(JSON.parse(data.toString()))));
wss.on('connection', (ws) => {
  const joined = [];
  ws.on('message', (data) => {
    let cmd;
    try { cmd = JSON.parse(data.toString()); } catch { return; }
    if (cmd.command === 'join' && Array.isArray(cmd.topics)) {
      for (const t of cmd.topics) {
        if (!topics.has(t)) topics.set(t, new Set());
        topics.get(t).add(ws);
        joined.push(t);
      }
      ws.send(JSON.stringify({ topic: '@join', payload: cmd.topics }));
    }
  });
  ws.on('close', () => { for (const t of joined) topics.get(t)?.delete(ws); });
});
server.listen(port, '127.0.0.1', () => console.error(`ws listening on 127.0.0.1:${port}`));
