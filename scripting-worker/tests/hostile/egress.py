# With egress allowed to one name: a tunnel through the proxy to it works; another port, the
# same port by address, cleartext HTTP and a direct connect do not.
import json, os, socket

ALLOWED, OTHER = {{ALLOWED_PORT}}, {{OTHER_PORT}}

def connect_via_proxy(target):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head.split(b"\r\n", 1)[0].decode()

result = {"proxy_env": os.environ.get("HTTPS_PROXY"), "refused": {}}
s, status = connect_via_proxy(f"localhost:{ALLOWED}")
result["allowed_status"] = status
s.sendall(b"ping")
result["tunnel"] = s.recv(4).decode()
s.close()
for target in [f"localhost:{OTHER}", f"127.0.0.1:{ALLOWED}"]:
    s, status = connect_via_proxy(target)
    result["refused"][target] = status
    s.close()
plain = socket.create_connection(("127.0.0.1", 3128), timeout=5)
plain.sendall(f"GET http://localhost:{ALLOWED}/ HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
result["plain_http"] = plain.recv(200).split(b"\r\n", 1)[0].decode()
try:
    socket.create_connection(("127.0.0.1", ALLOWED), timeout=3)
    result["direct"] = "connected"
except OSError as e:
    result["direct"] = f"refused: {e}"
print(json.dumps(result))
