# Helpers shared by the benchmark scripts (sourced, not run). Sets `work` (a temporary
# directory removed on exit) and kills every process recorded with `track` on exit.

work=$(mktemp -d)
# Processes are started inside $(...) too, so their pids go to a file.
track() { echo "$1" >>"$work/pids"; }
kill_all() { [ -f "$work/pids" ] && xargs -r kill -9 <"$work/pids" 2>/dev/null; rm -f "$work/pids"; }
cleanup() { kill_all || true; rm -rf "$work"; }
trap cleanup EXIT

# A free loopback port below 55000 with port + 10000 free too (a Redis Cluster node's bus
# listens there).
free_port() { python3 -c '
import socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p < 55000 and free(p + 10000): print(p); break'; }

# Waits (10 s at most) until something listens on 127.0.0.1:$1.
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
