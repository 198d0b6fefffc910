# Fills /tmp until its size cap stops it (enforced inside the sandbox: the script sees ENOSPC),
# in files each below the file-size limit, and says how far it got.
import errno, json
written, n, error = 0, 0, None
try:
    while True:
        with open(f"/tmp/fill-{n}", "wb") as f:
            for _ in range(8):
                f.write(b"x" * 65536)
                f.flush()
                written += 65536
        n += 1
except OSError as e:
    error = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({"written": written, "error": error}))
