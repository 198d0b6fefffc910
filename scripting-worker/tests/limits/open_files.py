# Opens files until RLIMIT_NOFILE stops it (enforced inside: EMFILE).
import errno, json
handles, error = [], None
try:
    while True:
        handles.append(open("/job/main.py"))
except OSError as e:
    error = errno.errorcode.get(e.errno)
print(json.dumps({"opened": len(handles), "error": error}))
