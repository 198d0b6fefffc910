# Writes one file past RLIMIT_FSIZE (enforced inside: EFBIG).
import errno, json, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
written, error = 0, None
try:
    with open("/tmp/big", "wb", buffering=0) as f:
        while True:
            f.write(b"f" * 4096)
            written += 4096
except OSError as e:
    error = errno.errorcode.get(e.errno)
print(json.dumps({"written": written, "error": error}))
