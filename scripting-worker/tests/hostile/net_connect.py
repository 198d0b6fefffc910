# Connects to a listener the test runs on the host's 127.0.0.1 (and to the host's other
# addresses): with no network in the sandbox, every connect must fail.
import json, socket

escaped, blocked = [], []
for host in ["127.0.0.1", "{{HOST_IP}}", "localhost"]:
    try:
        s = socket.create_connection((host, {{PORT}}), timeout=3)
        s.sendall(b"escaped")
        s.close()
        escaped.append(host)
    except OSError as e:
        blocked.append(f"{host}: {e}")
print(json.dumps({"escaped": escaped, "blocked": blocked}))
