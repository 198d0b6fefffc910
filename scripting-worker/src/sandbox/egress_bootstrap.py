# Qiria's egress bootstrap, run in place of the script when the worker allows egress: the
# sandbox has no network, only its loopback and the worker's proxy socket at
# /run/qiria/proxy.sock. This forwards 127.0.0.1:3128 to that socket, so that the usual
# HTTPS_PROXY=http://127.0.0.1:3128 works, then runs /job/main.py as __main__. It is not a
# boundary: the worker's proxy behind the socket checks every destination.
import runpy
import socket
import sys
import threading

PROXY_SOCKET = "/run/qiria/proxy.sock"


def _pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener):
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(PROXY_SOCKET)
        except OSError:
            client.close()
            continue
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_listener.bind(("127.0.0.1", 3128))
_listener.listen(16)
threading.Thread(target=_serve, args=(_listener,), daemon=True).start()
sys.argv = ["/job/main.py"]
runpy.run_path("/job/main.py", run_name="__main__")
