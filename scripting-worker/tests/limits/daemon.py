# Leaves a daemon behind: a double-forked child in its own session that would run forever.
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.2)
print("daemon started")
