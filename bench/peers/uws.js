// uWebSockets.js peer for ringcast-bench: the roadrunner join protocol on /ws
// and POST /publish {"topics":[...],"payload":"..."} on the same port, using
// uWS's own topic pub/sub (its idiomatic broadcast). One thread.
// Usage: node bench/peers/uws.js PORT
const uWS = require('uwebsockets');
const port = Number(process.argv[2] || 9101);

const app = uWS.App();
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
  .post('/publish', (res) => {
    let chunks = [];
    res.onAborted(() => { chunks = null; });
    res.onData((chunk, last) => {
      chunks.push(Buffer.from(chunk));
      if (!last) return;
      const body = JSON.parse(Buffer.concat(chunks).toString());
      for (const t of body.topics) app.publish(t, JSON.stringify({ topic: t, payload: body.payload }));
      res.end('{"ok":true}');
    });
  })
  .listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`uws: cannot listen on ${port}`); process.exit(1); }
    console.error(`uws listening on 127.0.0.1:${port}`);
  });
