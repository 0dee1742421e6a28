"""A stand-in experiment: serves one page on port 5000."""
from http.server import BaseHTTPRequestHandler, HTTPServer

GREETING = "hello from the test experiment"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = GREETING.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", 5000), Handler).serve_forever()
