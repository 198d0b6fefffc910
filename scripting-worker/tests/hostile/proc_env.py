# Looks for the worker's canary environment variable anywhere under /proc (every process's
# environ and cmdline) and in its own environment.
import json, os

needle = b"{{CANARY_VALUE}}"
escaped, blocked = [], []
if any(needle in (k + "=" + v).encode() for k, v in os.environ.items()):
    escaped.append("os.environ")
for pid in os.listdir("/proc"):
    for name in ["environ", "cmdline"]:
        path = f"/proc/{pid}/{name}"
        try:
            with open(path, "rb") as f:
                if needle in f.read():
                    escaped.append(path)
        except OSError:
            pass
blocked.append(f"searched {len(os.listdir('/proc'))} /proc entries; environment has {len(os.environ)} variables")
print(json.dumps({"escaped": escaped, "blocked": blocked}))
