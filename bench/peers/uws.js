// uWebSockets.js peer for ringcast-bench: the roadrunner join protocol on /ws;
// publications {"topics":[...],"payload":"..."} as WebSocket messages on /pub
// (its fastest idiomatic path: many publishes per event-loop turn, which
// uWS's topic tree drains per subscriber in one write) or as POST /publish,
// both into uWS's own topic pub/sub. One thread.
// Usage: node bench/peers/uws.js PORT [CERT.pem KEY.pem]
// With a certificate and key it serves TLS (uWS.SSLApp: wss:// and https://).
const uWS = require('uwebsockets');
const port = Number(process.argv[2] || 9101);
const [cert, key] = process.argv.slice(3);

const app = cert ? uWS.SSLApp({ cert_file_name: cert, key_file_name: key }) : uWS.App();
const publish = (body) => {
  for (const t of body.topics) app.publish(t, JSON.stringify({ topic: t, payload: body.payload }));
};
app
  .ws('/ws', {
    maxPayloadLength: 64 * 1024,
    maxBackpressure: 1024 * 1024,
    idleTimeout: 0,
    message: (ws, message) => {
      let cmd;
      try { cmd = JSON.parse(Buffer.from(message).toString()); } catch { return; }
      if (cmd.command === 'join' && Array.isArray(cmd.topics)) {
        for (const t of cmd.topics) ws.subscribe(t);
        ws.send(JSON.stringify({ topic: '@join', payload: cmd.topics }));
      }
    },
  })
  .ws('/pub', {
    maxPayloadLength: 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 0,
    message: (ws, message) => publish(JSON.parse(Buffer.from(message).toString())),
  })
  .post('/publish', (res) => {
    let chunks = [];
    res.onAborted(() => { chunks = null; });
    res.onData((chunk, last) => {
      chunks.push(Buffer.from(chunk));
      if (!last) return;
      publish(JSON.parse(Buffer.concat(chunks).toString()));
      res.end('{"ok":true}');
    });
  })
  .listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`uws: cannot listen on ${port}`); process.exit(1); }
    console.error(`uws listening on 127.0.0.1:${port}${cert ? ' (TLS)' : ''}`);
  });
