# Tries to become root, mount, ptrace and load a kernel module: each must fail.
import ctypes, json, os

libc = ctypes.CDLL(None, use_errno=True)
escaped, blocked = [], []

def attempt(name, call):
    try:
        result = call()
    except OSError as e:
        blocked.append(f"{name}: {e.strerror}")
        return
    if result is not None and result < 0:
        blocked.append(f"{name}: {os.strerror(ctypes.get_errno())}")
    else:
        escaped.append(name)

attempt("setuid(0)", lambda: os.setuid(0))
attempt("setgid(0)", lambda: os.setgid(0))
attempt("mount tmpfs", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
attempt("ptrace attach 1", lambda: libc.ptrace(16, 1, None, None))
# finit_module(2) with a bogus fd: EPERM (no CAP_SYS_MODULE) or ENOSYS, never success.
attempt("finit_module", lambda: libc.syscall(313, -1, b"", 0))
attempt("init_module", lambda: libc.syscall(175, None, 0, b""))
attempt("chroot", lambda: os.chroot("/tmp"))
attempt("sethostname", lambda: libc.sethostname(b"evil", 4))
print(json.dumps({"uid": os.getuid(), "escaped": escaped, "blocked": blocked}))
