# Reads a canary file the test planted on the host outside the root filesystem, and a fake
# Kubernetes service-account token planted where a pod's would be; then searches every
# readable file outside the interpreter's own tree for the canary's content.
import json, os

escaped, blocked = [], []
for path in ["{{CANARY_FILE}}", "/var/run/secrets/kubernetes.io/serviceaccount/token", "/etc/shadow", "/root/.bash_history"]:
    try:
        with open(path) as f:
            f.read()
        escaped.append(path)
    except OSError as e:
        blocked.append(f"{path}: {e.strerror}")
# Given reversed, so that the script itself (in /job) does not hold what it looks for.
secret = "{{CANARY_CONTENT_REVERSED}}"[::-1]
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/dev", "/usr", "/lib", "/lib64")):
        dirs[:] = []
        continue
    for name in files:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                if secret.encode() in f.read(1 << 20):
                    escaped.append("found in " + path)
        except OSError:
            pass
print(json.dumps({"escaped": escaped, "blocked": blocked}))
