"""A minimal ws2api backend for ringcast's proxy dialect (docs/proxy.md).

Run: python3 examples/proxy/backend.py   (listens on 127.0.0.1:5000)
  GET    /<ClientId>  -> "ok" allows the WebSocket connection
  POST   /<ClientId>  -> a client message; a non-empty answer goes back to it
  DELETE /<ClientId>  -> the client left; the body is the close reason
Push to a client any time: curl -d 'hello' http://127.0.0.1:8081/<ClientId>
"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: ringcast reuses connections

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self):
        client = self.path.lstrip("/")
        if client.startswith("banned"):
            return self.answer(403, b"you are banned")
        self.answer(200, b"ok")

    def do_POST(self):
        message = self.body()
        self.answer(200, b"you said: " + message)

    def do_DELETE(self):
        reason = self.body().decode(errors="replace")
        print(f"{self.path.lstrip('/')} left: {reason or '(no reason)'}", flush=True)
        self.answer(200)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 5000), Backend).serve_forever()
