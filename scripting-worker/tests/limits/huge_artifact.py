# Fills /out with files each below the file-size limit, until /out itself is full.
written, n = 0, 0
try:
    while written < (1 << 30):
        with open(f"/out/part-{n}.bin", "wb") as f:
            f.write(b"z" * (256 << 10))
        written += 256 << 10
        n += 1
except OSError as e:
    print("stopped:", e.strerror)
print("wrote", written)
