# Writes everywhere but /tmp and /out: the root, the interpreter, the script's own directory,
# /etc, the kernel's tunables. All must fail; /tmp and /out must work.
import json, os

escaped, blocked = [], []
for path in ["/evil", "/usr/bin/python3", "/job/main.py", "/job/evil", "/etc/passwd", "/proc/sys/kernel/hostname", "/dev/evil"]:
    try:
        with open(path, "a") as f:
            f.write("x")
        escaped.append(path)
    except OSError as e:
        blocked.append(f"{path}: {e.strerror}")
for path in ["/tmp/ok", "/out/ok"]:
    with open(path, "w") as f:
        f.write("fine")
print(json.dumps({"escaped": escaped, "blocked": blocked}))
