// Node `ws` peer for ringcast-bench: the roadrunner join protocol on /ws and
// POST /publish on the same port; the idiomatic broadcast loop over a Set of
// subscribers per topic, encoding once per publication. One thread.
// Usage: node bench/peers/ws.js PORT
const http = require('http');
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2] || 9102);
const topics = new Map();

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') { res.writeHead(404); res.end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = JSON.parse(Buffer.concat(chunks).toString());
    for (const t of body.topics) {
      const frame = JSON.stringify({ topic: t, payload: body.payload });
      for (const ws of topics.get(t) || []) ws.send(frame);
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
  });
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
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
