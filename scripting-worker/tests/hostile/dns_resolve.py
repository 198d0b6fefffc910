# Resolves a name the test serves on the host (a UDP listener on 127.0.0.1 that records any
# query), through the resolver and by a raw query: neither may reach it.
import json, socket

escaped, blocked = [], []
try:
    socket.getaddrinfo("canary.qiria.test", 80)
    escaped.append("getaddrinfo")
except OSError as e:
    blocked.append(f"getaddrinfo: {e}")
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06canary\x05qiria\x04test\x00\x00\x01\x00\x01"
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(query, ("127.0.0.1", {{DNS_PORT}}))
    s.recvfrom(512)
    escaped.append("udp answer")
except OSError as e:
    blocked.append(f"udp: {e}")
print(json.dumps({"escaped": escaped, "blocked": blocked}))
