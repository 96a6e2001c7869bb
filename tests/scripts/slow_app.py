"""A DaemonApp on the real reactor for signal tests: one slow item, then idles.

Prints "started" once the slow item began and "finished" when it ended, then the
exit status that app.run() returned.
"""

import sys
import time

from twisted.logger import globalLogBeginner, textFileLogObserver

from daemonapp import Daemon, DaemonApp

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)


class Slow(Daemon):
    run_every = 60
    in_thread = "thread" in sys.argv
    jobs = [1]

    def get_work(self):
        return self.jobs.pop() if self.jobs else None

    def do_work(self, job):
        print("started", flush=True)
        time.sleep(float(sys.argv[1]))
        print("finished", flush=True)


app = DaemonApp(stop_timeout=float(sys.argv[2]))
app.add(Slow())
status = app.run()
print("status", status, flush=True)
sys.exit(status)
